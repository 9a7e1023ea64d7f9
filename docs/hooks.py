"""MkDocs hook: the recipe keys page lists every key from the dataclasses the recipe parser reads, so it cannot drift
from the code (a key added, removed or re-documented shows on the next build)."""

import dataclasses
import enum
import re

MARKER = "<!-- recipe keys: generated from phi3v_recipe.config.TYPES -->"


def type_name(kind) -> str:
    text = kind.__name__ if isinstance(kind, type) else str(kind)
    return re.sub(r"\btyping\.|\b[\w.]+\.(?=[A-Z]\w*\b)", "", text)


def default_of(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, enum.Enum):
        value = value.value
    return f"`{value!r}`" if len(repr(value)) < 60 else "(long; see `--help`)"


def cell(text: str) -> str:
    """Table cell text (a pipe in a code span needs no escape: the table parser skips code spans)."""
    return " ".join(text.split()).replace("|", "\\|")


def first_sentences(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    return text[: cut + 1] if cut > 0 else text[:limit] + "..."


def table(fields, full_help: bool) -> str:
    rows = ["| key | type | default | what |", "|---|---|---|---|"]
    for field in fields:
        help_text = field.metadata.get("help", "")
        what = help_text if full_help else first_sentences(help_text)
        kind = " ".join(type_name(field.type).split())
        rows.append(f"| `{field.name}` | `{kind}` | {default_of(field)} | {cell(what)} |")
    return "\n".join(rows)


def keys_markdown() -> str:
    from trl import DPOConfig, GRPOConfig, ModelConfig, SFTConfig

    from phi3v_recipe.arguments import DataArguments, RecipeArguments
    from phi3v_recipe.config import TYPES

    ours = {f.name for f in dataclasses.fields(RecipeArguments)}
    data = list(dataclasses.fields(DataArguments))
    run = [f for f in dataclasses.fields(RecipeArguments) if f.name not in {d.name for d in data}]
    model = [f for f in dataclasses.fields(ModelConfig) if f.name not in ours]
    model_names = {f.name for f in model}
    training = [f for f in dataclasses.fields(SFTConfig) if f.init and f.name not in ours | model_names]
    assert {f.name for f in data + run + model + training} == {f.name for t in TYPES for f in dataclasses.fields(t)}
    listed = {f.name for f in data + run + model + training}
    grpo = [f for f in dataclasses.fields(GRPOConfig) if f.init and f.name not in listed]
    dpo = [f for f in dataclasses.fields(DPOConfig) if f.init and f.name not in listed]
    return "\n\n".join(
        [
            "### The data (ours: `DataArguments`, `phi3v_recipe/arguments.py`)",
            table(data, full_help=True),
            "### The model family and the run (ours: `RecipeArguments`)",
            table(run, full_help=True),
            "### The model (TRL's `ModelConfig`)",
            table(model, full_help=False),
            "### Training (TRL's `SFTConfig`, with transformers' `TrainingArguments`)",
            "Help shortened to its first sentences; `phi3v-recipe train --help` prints it in full.",
            table(training, full_help=False),
            "### Reinforcement (TRL's `GRPOConfig`, with `stage: grpo`)",
            "The keys `GRPOConfig` adds to the training keys above (an SFT recipe refuses them, by name).",
            table(grpo, full_help=False),
            "### Preferences (TRL's `DPOConfig`, with `stage: dpo`)",
            "The keys `DPOConfig` adds to the training keys above.",
            table(dpo, full_help=False),
        ]
    )


def on_page_markdown(markdown, page, config, files):
    if MARKER in markdown:
        return markdown.replace(MARKER, keys_markdown())
    return markdown
