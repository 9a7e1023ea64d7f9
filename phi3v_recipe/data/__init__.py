"""Data: any image-text source becomes conversations, checked row by row, with lengths and a train/eval split.

Every source (``sources.py``) and row format (``formats.py``) becomes the same table: one row per example with
``images`` (local files), ``messages`` (the conversation, typed content), ``answers`` (the references of its last
assistant turn), ``length`` (text + image tokens, from image sizes alone) and the source's own columns. Rows that
cannot be trained on are skipped and counted with the reason (``checks.py``), or with ``strict`` raise an error
naming the row.
"""

import csv
import dataclasses
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy
import pyarrow.compute

from ..answers import as_label, format_number, normalize
from ..arguments import DEFAULT_ANSWER_TEMPLATE, DEFAULT_QUESTION, DataArguments, template_fields
from ..conversation import conversation_length
from ..errors import UserError
from ..files import is_disk_full
from . import prepared
from .checks import BadRow, check_conversation, check_image, control_tokens
from .formats import (
    detect_format,
    image_column,
    qa_columns,
    required_columns,
    to_conversation,
    turn_images,
)
from .sources import image_refs, load_table, resolved_per_row, row_paths

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


def prepare_data(args: DataArguments, processor, max_length: int | None, num_proc: int | None = None) -> PreparedData:
    """Load the source, turn every row into a checked conversation, compute lengths and split into train / eval
    (deterministically, or from ``eval_split``). Rows are checked by ``num_proc`` processes (default: every core
    this process may use) and the result is kept (``prepared.py``): a second call reads it back in seconds."""
    train, skipped, args = _prepare_split(args, processor, max_length, num_proc)
    if args.eval_split is not None:
        held_out, eval_skipped, _ = _prepare_split(
            dataclasses.replace(args, dataset_split=args.eval_split), processor, max_length, num_proc
        )
        return PreparedData(train, held_out, skipped + eval_skipped, args)
    if args.eval_fraction == 0 or len(train) < 2:
        return PreparedData(train, None, skipped, args)
    split = train.train_test_split(test_size=args.eval_fraction, seed=args.split_seed)
    return PreparedData(split["train"], split["test"], skipped, args)


PARALLEL_FROM = 1000  # rows: below this, starting processes costs more than it saves
OURS = ("images", "messages", "answers", "length")
TEXT = datasets.Value("string")
FEATURES = {
    "images": datasets.List(TEXT),
    "messages": datasets.List({"role": TEXT, "content": datasets.List({"type": TEXT, "text": TEXT})}),
    "answers": datasets.List(TEXT),
    "length": datasets.Value("int64"),
    "_skip_kind": TEXT,
    "_skip_detail": TEXT,
}


def _prepare_split(args: DataArguments, processor, max_length: int | None, num_proc: int | None):
    """(the rows of one split that can be trained on, the skipped ones with the reason, the resolved arguments)."""
    table, base_dir = load_table(args)
    if args.max_rows is not None:
        table = table.select(range(min(args.max_rows, len(table))))
    args = resolve(args, table)
    folder = Path(args.prepared_dir or prepared.default_dir()) / prepared.entry_key(
        table, args, prepared.processor_digest(processor), max_length
    )
    found = prepared.load(folder)
    if found is not None:
        print(f"Data ({args.dataset_split}): the prepared rows in {folder}")
    else:
        _check_rows(table, args, base_dir, processor, max_length, num_proc, folder)
        found = prepared.load(folder, check_images=False)
    kept, skipped = found
    if args.strict and skipped:
        index, key, err = min(skipped, key=lambda row: row[0])
        raise BadRow(
            f"Row {index} ({args.id_column}={key}): {err}. Fix or remove the row, or set strict: false to skip bad rows."
        )
    return kept, skipped, args


def _check_rows(table, args, base_dir, processor, max_length, num_proc, folder: Path) -> None:
    """Check every row in ``num_proc`` processes, each writing its share to disk, and save the entry ``folder``."""
    base_dir = Path(args.image_root) if args.image_root else base_dir
    column, is_video = image_column(args.data_format, table.column_names, args)
    if column is not None and column not in table.column_names:
        raise UserError(f"image column {column!r} is not a column of {args.dataset}: {table.column_names}")
    per_row = resolved_per_row(table, args, column, is_video)
    if not per_row:  # fetched, written or decoded first, then handed to the rows as a column
        refs = image_refs(table, args, column, base_dir, is_video)
        if column is not None:  # never decoded while iterating
            table = table.remove_columns(column)
        bad = [r if isinstance(r, BadRow) else None for r in refs]
        table = table.add_column("_refs", [[] if b else r for r, b in zip(refs, bad)], new_fingerprint="refs")
        table = table.add_column("_ref_kind", [b and b.kind for b in bad], new_fingerprint="kind")
        table = table.add_column("_ref_detail", [b and b.detail for b in bad], new_fingerprint="detail")
    workers = num_proc or len(os.sched_getaffinity(0))
    check = RowCheck(args, base_dir, column, per_row, control_tokens(processor.tokenizer), processor, max_length)
    removed = [
        c for c in table.column_names if c in ("_refs", "_ref_kind", "_ref_detail") or (per_row and c == column)
    ]
    features = datasets.Features(
        {k: v for k, v in table.features.items() if k not in removed and k not in OURS} | FEATURES
    )
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.checking")  # unique across machines too
    try:
        staging.mkdir(parents=True, exist_ok=True)
        checked = table.map(
            check,
            batched=True,
            batch_size=100,
            remove_columns=removed,
            features=features,
            num_proc=workers if workers > 1 and len(table) >= PARALLEL_FROM else None,
            cache_file_name=str(staging / "rows.arrow"),
            new_fingerprint=folder.name,
            desc=f"Checking rows ({args.dataset_split})",
        )
        kinds = checked.data.column("_skip_kind")
        bad_rows = pyarrow.compute.indices_nonzero(pyarrow.compute.is_valid(kinds)).to_numpy().astype(numpy.int64)
        bad = checked.select(bad_rows)
        ids = table.select(bad_rows)[args.id_column] if args.id_column in table.column_names else bad_rows
        skipped = [
            {"index": int(i), "id": str(key), "kind": kind, "detail": detail, "images": images}
            for i, key, kind, detail, images in zip(
                bad_rows, ids, bad["_skip_kind"], bad["_skip_detail"], bad["images"]
            )
        ]
        kept = checked.select(numpy.setdiff1d(numpy.arange(len(checked)), bad_rows))
        prepared.save(folder, kept.remove_columns(["_skip_kind", "_skip_detail"]), skipped)
    except OSError as err:
        if err.errno not in prepared.UNWRITABLE and not is_disk_full(err):
            raise
        raise prepared.unwritable(folder.parent, err) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass
class RowCheck:
    """Checks a batch of rows (in any process): the conversation, the images' files and the length; a row that
    cannot be trained on gets the reason in ``_skip_kind`` / ``_skip_detail``."""

    args: DataArguments
    base_dir: Path
    column: str | None  # the image column
    per_row: bool  # its paths are resolved here (else they come as `_refs`)
    tokens: list[str]
    processor: object
    max_length: int | None

    def __call__(self, batch: dict) -> dict:
        out = {name: [] for name in FEATURES}
        for values in zip(*batch.values()):
            row = dict(zip(batch, values))
            images = self.images(row)
            try:
                if isinstance(images, BadRow):
                    raise images
                messages, answers, length = self.check(row, images)
            except BadRow as err:
                messages, answers, length = [], [], 0
                kind, detail = err.kind, err.detail
            else:
                kind = detail = None
            for name, value in zip(
                FEATURES, (images if isinstance(images, list) else [], messages, answers, length, kind, detail)
            ):
                out[name].append(value)
        return out

    def images(self, row: dict) -> list[str] | BadRow:
        if not self.per_row:
            return BadRow(row["_ref_kind"], row["_ref_detail"]) if row["_ref_kind"] else row["_refs"]
        if self.column is not None:
            return row_paths(row[self.column], self.base_dir)
        return [str(self.base_dir / p) for p in turn_images(row)]

    def check(self, row: dict, images: list[str]):
        args = self.args
        messages, answers = to_conversation(row, args.data_format, args, len(images))
        check_conversation(messages, len(images), self.tokens)
        if args.scoring() == "accuracy" and as_label(answers[0], args.labels) is None:
            raise BadRow("answer not in labels", f"{answers[0]!r} is none of {args.labels}")
        if not images:
            raise BadRow("no image", f"column {self.column!r} is empty")
        sizes = [check_image(path, args.max_image_pixels) for path in images]
        length = conversation_length(self.processor, messages, sizes)
        if self.max_length is not None and length > self.max_length:
            raise BadRow("longer than max_length", f"{length} tokens (text + images) > {self.max_length}")
        return messages, answers, length
