"""Data: any image-text source becomes conversations, checked row by row, with lengths and a train/eval split.

Every source (``sources.py``) and row format (``formats.py``) becomes the same table: one row per example with
``images`` (local files), ``messages`` (the conversation, typed content), ``answers`` (the references of its last
assistant turn), ``length`` (text + image tokens, from image sizes alone) and the source's own columns. Rows that
cannot be trained on are skipped and counted with the reason (``checks.py``), or with ``strict`` raise an error
naming the row.
"""

import csv
import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
from tqdm import tqdm

from ..answers import as_label, format_number, normalize
from ..arguments import DEFAULT_ANSWER_TEMPLATE, DEFAULT_QUESTION, DataArguments, template_fields
from ..conversation import conversation_length
from ..errors import UserError
from .checks import BadRow, check_conversation, check_image, control_tokens
from .formats import (
    detect_format,
    image_column,
    qa_columns,
    required_columns,
    to_conversation,
    turn_images,
)
from .sources import image_refs, load_table

__all__ = [
    "DEFAULT_ANSWER_TEMPLATE",
    "DEFAULT_QUESTION",
    "BadRow",
    "DataArguments",
    "PreparedData",
    "as_label",
    "format_number",
    "load_table",
    "normalize",
    "prepare_data",
    "template_fields",
]


@dataclass
class PreparedData:
    train: datasets.Dataset
    eval: datasets.Dataset | None
    skipped: list[tuple[int, str, BadRow]]  # (row index, row id, why)
    args: DataArguments  # with the format and columns resolved

    def summary(self) -> str:
        counts = Counter(err.kind for _, _, err in self.skipped)
        reasons = ", ".join(f"{n} {r}" for r, n in counts.most_common()) or "none"
        total = len(self.train) + (len(self.eval) if self.eval is not None else 0)
        return f"{total} rows kept ({len(self.train)} train, {len(self.eval or [])} eval); {len(self.skipped)} skipped: {reasons}"

    def write_skipped(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["row", "id", "reason"])
            writer.writerows((index, key, str(err)) for index, key, err in self.skipped)
        return path


def resolve(args: DataArguments, table: datasets.Dataset) -> DataArguments:
    """The arguments with the format and the columns it reads settled (auto-detected ones filled in), checked
    against the source's columns: a missing column is one error up front, naming it and the columns found."""
    columns = table.column_names
    fmt = detect_format(columns, args)
    if fmt == "qa":
        question, answer = qa_columns(columns, args)
        args = dataclasses.replace(args, question_column=question, answer_column=answer)
    args = dataclasses.replace(args, data_format=fmt)
    missing = [name for name in required_columns(fmt, args) if name not in columns]
    if args.image_url_column and args.image_url_column not in columns:
        missing.append(args.image_url_column)
    if missing:
        raise UserError(
            f"dataset={args.dataset!r} ({fmt} format) has no column {', '.join(map(repr, missing))}; its columns are "
            f"{columns}. Fix the recipe's column names (answer_template, question_column, answer_column, ...)."
        )
    return args


def prepare_data(args: DataArguments, processor, max_length: int | None) -> PreparedData:
    """Load the source, turn every row into a checked conversation, compute lengths and split into train / eval
    (deterministically, or from ``eval_split``)."""
    train, skipped, args = _prepare_split(args, processor, max_length)
    if args.eval_split is not None:
        held_out, eval_skipped, _ = _prepare_split(
            dataclasses.replace(args, dataset_split=args.eval_split), processor, max_length
        )
        return PreparedData(train, held_out, skipped + eval_skipped, args)
    if args.eval_fraction == 0 or len(train) < 2:
        return PreparedData(train, None, skipped, args)
    split = train.train_test_split(test_size=args.eval_fraction, seed=args.split_seed)
    return PreparedData(split["train"], split["test"], skipped, args)


def _prepare_split(args: DataArguments, processor, max_length: int | None):
    """(the rows of one split that can be trained on, the skipped ones with the reason, the resolved arguments)."""
    table, base_dir = load_table(args)
    if args.max_rows is not None:
        table = table.select(range(min(args.max_rows, len(table))))
    args = resolve(args, table)
    base_dir = Path(args.image_root) if args.image_root else base_dir
    column, is_video = image_column(args.data_format, table.column_names, args)
    if column is not None and column not in table.column_names:
        raise UserError(f"image column {column!r} is not a column of {args.dataset}: {table.column_names}")
    refs = image_refs(table, args, column, base_dir, is_video)
    ids = table[args.id_column] if args.id_column in table.column_names else list(range(len(table)))
    if column is not None:  # never decoded while iterating: its images are checked below, as files
        table = table.remove_columns(column)
    tokens = control_tokens(processor.tokenizer)

    keep, records, skipped = [], [], []
    for index, row in enumerate(tqdm(table, desc=f"Checking rows ({args.dataset_split})", unit="row")):
        try:
            images = refs[index]
            if isinstance(images, BadRow):
                raise images
            if column is None and not args.image_url_column:
                images = [str(base_dir / p) for p in turn_images(row)]
            messages, answers = to_conversation(row, args.data_format, args, len(images))
            check_conversation(messages, len(images), tokens)
            if args.scoring() == "accuracy" and as_label(answers[0], args.labels) is None:
                raise BadRow("answer not in labels", f"{answers[0]!r} is none of {args.labels}")
            if not images:
                raise BadRow("no image", f"column {column!r} is empty")
            sizes = [check_image(path, args.max_image_pixels) for path in images]
            length = conversation_length(processor, messages, sizes)
            if max_length is not None and length > max_length:
                raise BadRow("longer than max_length", f"{length} tokens (text + images) > {max_length}")
        except BadRow as err:
            if args.strict:
                raise BadRow(
                    f"Row {index} ({args.id_column}={ids[index]}): {err}. Fix or remove the row, or set "
                    "strict: false to skip bad rows."
                ) from None
            skipped.append((index, str(ids[index]), err))
            continue
        keep.append(index)
        records.append({"images": images, "messages": messages, "answers": answers, "length": length})

    ours = ("images", "messages", "answers", "length")
    kept = table.select(keep).remove_columns([name for name in ours if name in table.column_names])
    if not kept.column_names:  # nothing of the source's own left to keep beside ours
        return datasets.Dataset.from_list(records), skipped, args
    for name in ours:
        kept = kept.add_column(name, [r[name] for r in records])
    return kept, skipped, args
