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
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from tqdm import tqdm

from ..conversation import conversation_length
from .checks import BadRow, check_conversation, check_image, control_tokens
from .formats import (
    FORMATS,
    as_label,
    detect_format,
    format_number,
    image_column,
    normalize,
    qa_columns,
    required_columns,
    template_fields,
    to_conversation,
    turn_images,
)
from .sources import image_refs, load_table

DEFAULT_QUESTION = "What is shown in this image?"
DEFAULT_ANSWER_TEMPLATE = "Product: {title}, Category: {category3_code}, Full Price: {full_price}"
METRICS = ("template", "exact_match", "anls", "accuracy")

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
class DataArguments:
    """Where the examples come from, what shape they have, and how they are scored."""

    dataset: str = field(
        default="data/sample/burberry.csv",
        metadata={"help": "A Hub dataset id, a local CSV/JSONL/Parquet file, an image folder or a video folder."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "The split to read from the source."})
    dataset_archive: str | None = field(
        default=None,
        metadata={"help": "A .tar/.zip file in the Hub dataset repo to download and read as a folder (UCF-101)."},
    )
    data_format: str = field(
        default="auto", metadata={"help": f"How rows become conversations: auto (from the columns) or one of {FORMATS}."}
    )
    image_column: str | None = field(
        default=None,
        metadata={
            "help": "Column with the image(s): paths (a list, or ';'-separated in a CSV) or an Image feature. "
            "Default: the first of images, image, local_image_path, image_path that exists."
        },
    )
    video_column: str | None = field(
        default=None,
        metadata={"help": "Column with a video (a video file, or a list of frames), sampled to max_frames images."},
    )
    max_frames: int = field(default=8, metadata={"help": "Frames sampled evenly from each video (official: 8)."})
    image_url_column: str | None = field(
        default=None, metadata={"help": "Column of image URLs to fetch (e.g. 'imageurl'); replaces image_column."}
    )
    image_root: str | None = field(
        default=None, metadata={"help": "Folder that relative image paths start from (default: the data file's)."}
    )
    id_column: str = field(
        default="product_code", metadata={"help": "Column that names a row (cache key, reports); else the row index."}
    )
    image_cache_dir: str = field(default="data/images", metadata={"help": "Where fetched images are cached."})
    question: str = field(
        default=DEFAULT_QUESTION, metadata={"help": "The question asked about every image (template format)."}
    )
    question_column: str | None = field(default=None, metadata={"help": "Column with each row's question."})
    answer_column: str | None = field(
        default=None, metadata={"help": "Column with each row's answer, or a list of answers (first one trained)."}
    )
    answer_template: str = field(
        default=DEFAULT_ANSWER_TEMPLATE, metadata={"help": "The answer, with {column} fields filled from the row."}
    )
    numeric_fields: list[str] = field(
        default_factory=lambda: ["full_price"], metadata={"help": "Template fields that must be numbers."}
    )
    metric: str | None = field(
        default=None,
        metadata={
            "help": f"How answers are scored: one of {METRICS}. Default: template for the template format, "
            "else exact_match."
        },
    )
    labels: list[str] | None = field(default=None, metadata={"help": "The label set of the accuracy metric."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of the rows held out for evaluation."})
    eval_split: str | None = field(
        default=None,
        metadata={"help": "Read the eval rows from this split of the source (e.g. validation) instead of holding out."},
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the (deterministic) train/eval split."})
    max_rows: int | None = field(default=None, metadata={"help": "Use only the first N rows of the source."})
    strict: bool = field(default=False, metadata={"help": "Fail on the first bad row instead of skipping it."})
    max_image_pixels: int = field(
        default=50_000_000, metadata={"help": "Images with more pixels are refused (decompression bombs)."}
    )

    def __post_init__(self):
        fields = template_fields(self.answer_template)
        if not fields:
            raise ValueError(f"answer_template={self.answer_template!r} names no column; use fields like '{{title}}'.")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}.")
        unknown = set(self.numeric_fields) - set(fields)
        if unknown:
            raise ValueError(
                f"numeric_fields {sorted(unknown)} are not fields of answer_template {self.answer_template!r}."
            )
        if self.data_format not in ("auto", *FORMATS):
            raise ValueError(f"data_format={self.data_format!r} is not one of auto, {', '.join(FORMATS)}.")
        if self.metric is not None and self.metric not in METRICS:
            raise ValueError(f"metric={self.metric!r} is not one of {', '.join(METRICS)}.")
        if self.metric == "accuracy" and not self.labels:
            raise ValueError("metric: accuracy needs labels: the list of possible answers (e.g. [True, False]).")
        if self.labels is not None:
            self.labels = [str(label) for label in self.labels]
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {self.max_frames}.")

    def scoring(self) -> str:
        """The metric: the recipe's, else the one that fits the format."""
        return self.metric or ("template" if self.data_format in ("auto", "template") else "exact_match")


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
    fmt = detect_format(columns, args, None)
    if fmt == "qa":
        question, answer = qa_columns(columns, args)
        args = dataclasses.replace(args, question_column=question, answer_column=answer)
    args = dataclasses.replace(args, data_format=fmt)
    missing = [name for name in required_columns(fmt, args) if name not in columns]
    if args.image_url_column and args.image_url_column not in columns:
        missing.append(args.image_url_column)
    if missing:
        raise ValueError(
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
        raise ValueError(f"image column {column!r} is not a column of {args.dataset}: {table.column_names}")
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
