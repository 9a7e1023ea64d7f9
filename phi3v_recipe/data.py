"""Data sources, row checks and the train/eval split.

Every source becomes the same table: one row per example with ``images`` (local file paths), ``question``,
``answer`` (the recipe's answer template filled from the row), ``length`` (text + image tokens, computed from the
image sizes alone) and the source's own columns. Rows that cannot be trained on are skipped and counted with the
reason (or, with ``strict``, raise an error naming the row).

Sources: a Hub dataset (with an ``Image`` column, or image URLs fetched into a cache), a local CSV or JSONL
with image paths relative to the file, or an image folder (``datasets``' imagefolder, with metadata).
"""

import csv
import hashlib
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from PIL import Image
from tqdm import tqdm

from .download import fetch_images
from .phi3_v.processing_phi3_v import IMAGE_TAG

DEFAULT_QUESTION = "What is shown in this image?"
DEFAULT_ANSWER_TEMPLATE = "Product: {title}, Category: {category3_code}, Full Price: {full_price}"


@dataclass
class DataArguments:
    """Where the examples come from and how they become prompts and answers."""

    dataset: str = field(
        default="data/sample/burberry.csv",
        metadata={"help": "A Hub dataset id, a local CSV/JSONL file, or an image folder."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "The split to read from the source."})
    image_column: str = field(
        default="local_image_path",
        metadata={"help": "Column with the image(s): paths (a list, or ';'-separated in a CSV) or an Image feature."},
    )
    image_url_column: str | None = field(
        default=None, metadata={"help": "Column of image URLs to fetch (e.g. 'imageurl'); replaces image_column."}
    )
    id_column: str = field(default="product_code", metadata={"help": "Column that names a row (cache key, reports)."})
    image_cache_dir: str = field(default="data/images", metadata={"help": "Where fetched images are cached."})
    question: str = field(default=DEFAULT_QUESTION, metadata={"help": "The question asked about every image."})
    answer_template: str = field(
        default=DEFAULT_ANSWER_TEMPLATE, metadata={"help": "The answer, with {column} fields filled from the row."}
    )
    numeric_fields: list[str] = field(
        default_factory=lambda: ["full_price"], metadata={"help": "Template fields that must be numbers."}
    )
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of the rows held out for evaluation."})
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


class BadRow(ValueError):
    """A row that cannot be trained on: ``kind`` is the reason counted in summaries, ``detail`` the specifics."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def format_number(value) -> str:
    """'1290.0' / 1290 / '$1,290.00' -> '1290'; 12.5 -> '12.5'. Raises ValueError when it is not a number."""
    number = float(str(value).replace(",", "").replace("$", "").strip())
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(value)
    return str(int(number)) if number.is_integer() else f"{number:.2f}".rstrip("0")


def format_answer(row: dict, args: DataArguments) -> str:
    values = {}
    for name in template_fields(args.answer_template):
        value = row.get(name)
        if value is None or str(value).strip() == "":
            raise BadRow(f"empty {name}")
        if name in args.numeric_fields:
            try:
                value = format_number(value)
            except ValueError:
                raise BadRow(f"non-numeric {name}", repr(value)) from None
        values[name] = str(value).strip()
    return args.answer_template.format(**values)


def check_image(path: str, max_pixels: int) -> tuple[int, int]:
    """Open and fully decode an image file; return its (width, height). Raises BadRow with the reason."""
    file = Path(path)
    if not file.is_file():
        raise BadRow("missing image file", path)
    if file.stat().st_size == 0:
        raise BadRow("empty (0-byte) image file", path)
    try:
        with Image.open(file) as image:
            if image.width * image.height > max_pixels:
                raise BadRow(
                    "image over max_image_pixels", f"{path} is {image.width}x{image.height} > {max_pixels} pixels"
                )
            image.load()  # decodes everything: catches truncated and corrupt files
            return image.size
    except BadRow:
        raise
    except Exception as err:
        raise BadRow("unreadable image", f"{path} ({type(err).__name__}: {err})") from None


def load_table(source: str, config: str | None = None, split: str = "train") -> datasets.Dataset:
    """Load a CSV/JSONL/Parquet file, an image folder or a Hub dataset as a `datasets.Dataset`."""
    path = Path(source)
    if path.is_file():
        kind = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix.lower())
        if kind is None:
            raise ValueError(f"dataset={source!r}: a local file must be .csv, .jsonl, .json or .parquet.")
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    if path.is_dir():
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
    if source.startswith((".", "/")) or source.endswith((".csv", ".jsonl", ".json")):
        raise FileNotFoundError(f"dataset={source!r} does not exist. Run `make sample-data` for the sample set.")
    return datasets.load_dataset(source, config, split=split)


def _image_refs(table: datasets.Dataset, args: DataArguments, base_dir: Path, cache_dir: Path) -> list:
    """Per row: a list of local image paths, or the BadRow that explains why there is none."""
    if args.image_url_column:
        rows = table.select_columns([args.id_column, args.image_url_column]).to_list()
        paths, failures = fetch_images(rows, args.image_url_column, args.id_column, cache_dir)
        return [
            [str(paths[key])]
            if (key := str(r[args.id_column])) in paths
            else BadRow("image download failed", failures[key])
            for r in rows
        ]
    feature = table.features.get(args.image_column)
    if feature is None:
        raise ValueError(f"image_column={args.image_column!r} is not a column of {args.dataset}: {table.column_names}")
    if isinstance(feature, datasets.Image) or getattr(feature, "feature", None) == datasets.Image():
        return _materialise_embedded_images(table, args, cache_dir)
    refs = []
    for value in table[args.image_column]:
        items = value if isinstance(value, list) else [v for v in str(value or "").split(";") if v.strip()]
        refs.append([str(p) if (p := Path(str(v).strip())).is_absolute() else str(base_dir / p) for v in items])
    return refs


def _materialise_embedded_images(table: datasets.Dataset, args: DataArguments, cache_dir: Path) -> list:
    """Write a Hub dataset's embedded images (their original bytes) to the cache, so every source is paths."""
    column = table.cast_column(
        args.image_column,
        datasets.Image(decode=False)
        if isinstance(table.features[args.image_column], datasets.Image)
        else datasets.List(datasets.Image(decode=False)),
    )[args.image_column]
    cache_dir.mkdir(parents=True, exist_ok=True)
    refs = []
    for value in tqdm(column, desc="Caching embedded images", unit="row"):
        paths = []
        for item in value if isinstance(value, list) else [value]:
            if item is None or (item.get("bytes") is None and item.get("path") is None):
                continue
            if item.get("bytes") is None:
                paths.append(item["path"])
                continue
            path = cache_dir / f"{hashlib.sha1(item['bytes']).hexdigest()}{Path(item.get('path') or '').suffix}"
            if not path.exists():
                path.write_bytes(item["bytes"])
            paths.append(str(path))
        refs.append(paths)
    return refs


@dataclass
class PreparedData:
    train: datasets.Dataset
    eval: datasets.Dataset | None
    skipped: list[tuple[int, str, BadRow]]  # (row index, row id, why)

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


def prepare_data(args: DataArguments, processor, max_length: int | None) -> PreparedData:
    """Load the source, check every row, compute lengths and split deterministically into train / eval."""
    from .collator import conversation, conversation_length

    table = load_table(args.dataset, args.dataset_config, args.dataset_split)
    if args.max_rows is not None:
        table = table.select(range(min(args.max_rows, len(table))))
    base_dir = Path(args.dataset).parent if Path(args.dataset).is_file() else Path(".")
    refs = _image_refs(table, args, base_dir, Path(args.image_cache_dir))
    ids = table[args.id_column] if args.id_column in table.column_names else list(range(len(table)))

    keep, records, skipped = [], [], []
    for index, row in enumerate(tqdm(table, desc="Checking rows", unit="row")):
        try:
            images = refs[index]
            if isinstance(images, BadRow):
                raise images
            if not images:
                raise BadRow("no image", f"column {args.image_column!r} is empty")
            question = row.get("question") or args.question
            answer = format_answer(row, args)
            if IMAGE_TAG.search(question) or IMAGE_TAG.search(answer):
                raise BadRow("malformed placeholders", "the question or answer holds an <|image_N|> tag")
            sizes = [check_image(path, args.max_image_pixels) for path in images]
            messages = conversation(question, len(images), answer)
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
        records.append(
            {"images": images, "messages": messages, "question": question, "answer": answer, "length": length}
        )

    kept = table.select(keep)
    for name in ("images", "messages", "question", "answer", "length"):
        if name in kept.column_names:
            kept = kept.remove_columns(name)
    for name in ("images", "messages", "question", "answer", "length"):
        kept = kept.add_column(name, [r[name] for r in records])
    if args.eval_fraction == 0 or len(kept) < 2:
        return PreparedData(kept, None, skipped)
    split = kept.train_test_split(test_size=args.eval_fraction, seed=args.split_seed)
    return PreparedData(split["train"], split["test"], skipped)
