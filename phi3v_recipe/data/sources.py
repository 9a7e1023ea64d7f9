"""Where rows and their images come from: local CSV / JSONL / Parquet files, image folders, video folders, archives
in Hub dataset repos, and Hub datasets; images as paths, URLs (fetched into a cache), embedded bytes, or videos
(decoded to evenly sampled frames). Every source ends as a table plus, per row, a list of local image files."""

import hashlib
import re
import tarfile
import zipfile
from pathlib import Path

import datasets
from tqdm import tqdm

from ..download import FetchError, fetch_images
from ..errors import UserError
from ..files import full_disk_is_one_line, is_disk_full, write_atomically
from .checks import BadRow

VIDEO_EXTENSIONS = {".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg"}
FILE_KINDS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
LOCAL_SUFFIXES = {*FILE_KINDS, ".tsv", ".txt", ".arrow", ".zip", ".gz", ".tar", ".yaml", ".yml"}


def load_table(args) -> tuple[datasets.Dataset, Path]:
    """The source as a `datasets.Dataset`, and the folder that relative image paths are read from."""
    source = args.dataset
    if args.dataset_archive:
        source = str(fetch_archive(args.dataset, args.dataset_archive, Path(args.image_cache_dir)))
    path = Path(source)
    if path.is_file():
        kind = FILE_KINDS.get(path.suffix.lower())
        if kind is None:
            raise UserError(f"dataset={source!r}: a local file must be .csv, .jsonl, .json or .parquet.")
        try:
            return datasets.load_dataset(kind, data_files=str(path), split="train"), path.parent
        except Exception as err:  # datasets says an empty file in its reader's words (pandas, arrow, its splits)
            if "no data" in str(err) or type(err).__name__ == "EmptyDataError" or path.stat().st_size == 0:
                raise UserError(
                    f"dataset={source!r} has no rows: the file is empty (or holds only a header)."
                ) from None
            raise
    if path.is_dir():
        if any(p.suffix.lower() in VIDEO_EXTENSIONS for p in path.rglob("*")):
            return video_folder(path, args.dataset_split), path
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=args.dataset_split), path
    looks_local = source.startswith((".", "/", "~")) or source.count("/") != 1 or path.suffix.lower() in LOCAL_SUFFIXES
    if looks_local:
        raise UserError(f"dataset={source!r} does not exist here (a Hub dataset id is owner/name). {writes(path)}")
    return load_hub_dataset(source, args), Path(".")


def writes(path: Path) -> str:
    """What writes a missing sample set: the command for that set, or a hint for any other path."""
    from ..synthetic import WRITERS

    if path.parent.name in WRITERS and path.name == f"{path.parent.name}.jsonl":
        return f"Write that sample set with: phi3v-recipe sample-data --task {path.parent.name} --out {path.parent}"
    if path.name == "burberry.csv":
        return f"Write the sample set with: phi3v-recipe sample-data --task burberry --out {path.parent} (or make sample-data)."
    return "Fix the path, or run `make sample-data` for the sample sets."


def load_hub_dataset(name: str, args) -> datasets.Dataset:
    """A Hub dataset, from the cache when the Hub cannot be reached; a clear error when it is in neither."""
    from ..hub import go_offline, hub_unreachable

    why = hub_unreachable()
    if why is not None:
        go_offline()
    from datasets.exceptions import DatasetNotFoundError

    try:
        return datasets.load_dataset(name, args.dataset_config, split=args.dataset_split)
    except (DatasetNotFoundError, ConnectionError, FileNotFoundError) as err:
        reason = f"the Hub cannot be reached ({why})" if why else f"{type(err).__name__}: {err}"
        raise UserError(
            f"Cannot load the dataset {name!r}: it is not in the local cache and {reason}. Check the id and config "
            "name, log in for a private or gated dataset (`hf auth login`), or load it once where the Hub is reachable."
        ) from None


def fetch_archive(repo_id: str, filename: str, cache_dir: Path) -> Path:
    """Download ``filename`` (a .tar[.gz] or .zip) from the Hub dataset repo and extract it once into the cache."""
    from huggingface_hub import hf_hub_download

    archive = Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset"))
    out = cache_dir / "archives" / re.sub(r"[^A-Za-z0-9._-]", "_", f"{repo_id}--{filename}")
    done = out / ".extracted"
    if not done.exists():
        out.mkdir(parents=True, exist_ok=True)
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(out)
        else:
            with tarfile.open(archive) as tarred:
                tarred.extractall(out, filter="data")  # no absolute paths, links out of `out`, or devices
        done.touch()
    children = [child for child in out.iterdir() if child.name != ".extracted"]
    return children[0] if len(children) == 1 and children[0].is_dir() else out


def video_folder(root: Path, split: str) -> datasets.Dataset:
    """``root/[split/]label/clip.avi`` as rows of ``id``, ``video`` (the file) and ``label`` (its folder's name)."""
    splits = {child.name for child in root.iterdir() if child.is_dir()}
    names = {"validation": "val", "val": "validation"}
    if {"train", "val", "test", "validation"} & splits:
        chosen = split if split in splits else names.get(split)
        if chosen not in splits:
            raise UserError(f"dataset_split={split!r} is not a folder of {root}: {sorted(splits)}.")
        root = root / chosen
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    return datasets.Dataset.from_dict(
        {"id": [p.stem for p in files], "video": [str(p) for p in files], "label": [p.parent.name for p in files]}
    )


def sample_evenly(items: list, count: int) -> list:
    """``count`` items spread evenly over the list, as the official UCF-101 conversion picks video frames."""
    if len(items) <= count:
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def video_frames(path: str, max_frames: int, cache_dir: Path) -> list[str]:
    """Decode a video file and cache ``max_frames`` evenly sampled frames as PNG files; return their paths."""
    file = Path(path)
    if not file.is_file():
        raise BadRow("missing video file", path)
    key = hashlib.sha1(f"{file.resolve()}:{file.stat().st_mtime_ns}:{max_frames}".encode()).hexdigest()
    folder = cache_dir / "frames" / key
    if (folder / ".done").exists():
        return sorted(str(p) for p in folder.glob("*.png"))
    try:
        import av
    except ImportError:
        raise ImportError("Reading video files needs PyAV: pip install av (or pip install '.[video]').") from None
    try:
        with av.open(str(file)) as container:
            frames = [frame.to_image() for frame in container.decode(video=0)]
    except Exception as err:
        if is_disk_full(err):
            raise
        raise BadRow("unreadable video", f"{path} ({type(err).__name__}: {err})") from None
    if not frames:
        raise BadRow("unreadable video", f"{path} has no frames")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(sample_evenly(frames, max_frames)):
        target = folder / f"{i:04d}.png"
        frame.convert("RGB").save(target)
        paths.append(str(target))
    (folder / ".done").touch()
    return paths


def _local(value, base_dir: Path) -> str:
    path = Path(str(value).strip())
    return str(path if path.is_absolute() else base_dir / path)


def row_paths(value, base_dir: Path) -> list[str]:
    """The local image paths of one row's image-column value: a list, or ';'-separated paths in a CSV."""
    items = value if isinstance(value, list) else [v for v in str(value or "").split(";") if v.strip()]
    return [_local(item, base_dir) for item in items if item is not None]


def resolved_per_row(table: datasets.Dataset, args, column: str | None, is_video: bool) -> bool:
    """Whether the image column holds plain paths, which each row resolves by itself (``row_paths``), so that rows can
    be checked in parallel shards; URLs, embedded images and videos are fetched or written first (``image_refs``)."""
    if args.image_url_column:
        return False
    if column is None:  # the images are named in the turns (turn_images)
        return True
    if is_video:
        return False
    feature = table.features[column]
    return not (isinstance(feature, datasets.Image) or getattr(feature, "feature", None) == datasets.Image())


def image_refs(table: datasets.Dataset, args, column: str | None, base_dir: Path, is_video: bool) -> list:
    """Per row: a list of local image paths, or the BadRow that explains why there is none."""
    cache_dir = Path(args.image_cache_dir)
    # A full disk while caching images stops the run: it is no bad row, every row after it would fail too.
    with full_disk_is_one_line(cache_dir, "caching images", "set image_cache_dir on another disk"):
        return _image_refs(table, args, column, base_dir, is_video, cache_dir)


def _image_refs(table: datasets.Dataset, args, column: str | None, base_dir: Path, is_video: bool, cache_dir: Path):
    if args.image_url_column:
        results = fetch_images(table[args.image_url_column], cache_dir)
        return [BadRow("image download failed", str(r)) if isinstance(r, FetchError) else [str(r)] for r in results]
    if column is None:
        return [[] for _ in range(len(table))]
    feature = table.features[column]
    if isinstance(feature, datasets.Image) or getattr(feature, "feature", None) == datasets.Image():
        return _materialise_embedded_images(table, column, cache_dir)
    refs = []
    for value in table[column]:
        paths = row_paths(value, base_dir)
        if is_video:
            try:
                if len(paths) == 1 and Path(paths[0]).suffix.lower() in VIDEO_EXTENSIONS:
                    paths = video_frames(paths[0], args.max_frames, cache_dir)
                else:
                    paths = sample_evenly(paths, args.max_frames)
            except BadRow as err:
                paths = err
        refs.append(paths)
    return refs


def _materialise_embedded_images(table: datasets.Dataset, column: str, cache_dir: Path) -> list:
    """Write a dataset's embedded images (their original bytes, undecoded) to the cache, so every source is paths.
    Bytes are checked later with the other rows' images, so one corrupt image is a counted skip."""
    single = isinstance(table.features[column], datasets.Image)
    raw = table.cast_column(
        column, datasets.Image(decode=False) if single else datasets.List(datasets.Image(decode=False))
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    refs = []
    for value in tqdm(raw[column], desc="Caching embedded images", unit="row"):
        paths = []
        for item in [value] if single else value or []:
            if item is None or (item.get("bytes") is None and item.get("path") is None):
                continue
            if item.get("bytes") is None:
                paths.append(item["path"])
                continue
            path = cache_dir / f"{hashlib.sha1(item['bytes']).hexdigest()}{Path(item.get('path') or '').suffix}"
            if not path.exists():
                write_atomically(path, item["bytes"])
            paths.append(str(path))
        refs.append(paths)
    return refs
