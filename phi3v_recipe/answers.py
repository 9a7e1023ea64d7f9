"""How answers are read: numbers in prices, and answers compared with references and labels. Plain Python, shared
by the data checks and the scored evaluation."""


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
