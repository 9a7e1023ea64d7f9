"""How answers are read: answers parsed with a template, numbers in prices, answers compared with references and
labels. Plain Python, shared by the data checks, the scored evaluation and its plots."""

import re
from functools import cache

from .arguments import template_fields


def format_number(value) -> str:
    """'1290.0' / 1290 / '$1,290.00' -> '1290'; 12.5 -> '12.5'. Raises ValueError when it is not a number."""
    number = float(str(value).replace(",", "").replace("$", "").strip())
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(value)
    return str(int(number)) if number.is_integer() else f"{number:.2f}".rstrip("0")


def normalize(text) -> str:
    """Lower case, single spaces, no surrounding spaces or final period (how answers and labels are compared)."""
    return " ".join(str(text).lower().split()).rstrip(".").strip()


def as_label(text, labels: list[str]) -> str | None:
    """The label an answer names, or None when it names none."""
    return next((label for label in labels if normalize(label) == normalize(text)), None)


@cache  # one pattern per template, not one per answer parsed
def template_regex(template: str) -> re.Pattern:
    """``"Product: {title}, Full Price: {full_price}"`` -> a regex with one named group per field."""
    fields = template_fields(template)
    pattern, rest = "", template
    for i, name in enumerate(fields):
        literal, rest = rest.split("{" + name + "}", 1)
        pattern += re.escape(literal) + (f"(?P<{name}>.+?)" if i < len(fields) - 1 or rest else f"(?P<{name}>.+)")
    return re.compile(r"\s*" + pattern + re.escape(rest) + r"\s*", re.DOTALL)


def parse_answer(text: str, template: str) -> dict | None:
    match = template_regex(template).fullmatch(text)
    return {k: v.strip() for k, v in match.groupdict().items()} if match else None


def parse_number(text) -> float | None:
    """'1,290.00' -> 1290.0, '$490' -> 490.0, 'about 5' -> None."""
    try:
        return float(format_number(text))
    except (ValueError, TypeError):
        return None
