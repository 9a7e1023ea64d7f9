"""Prepared tables, saved once and memory-mapped after: every other process of a run, every rerun and every resume
reads the checked rows instead of checking them again.

An entry is a folder ``<prepared_dir>/<key>``: the kept rows (``datasets``' ``save_to_disk``: Arrow files, read back
memory-mapped) and ``skipped.json`` (the skipped rows with their reason, and the digest of the image files). The key
hashes what shapes the rows: the source table's fingerprint (``datasets`` derives it from the data files, their
modification times and the split), every data key of the recipe, the processor (image processor settings, tokenizer,
chat template) and ``max_length``. The image files are the one input outside the key: an entry is used only while
every image it names still has the size and modification time it had (one ``stat`` per file).
"""

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import datasets
import pyarrow.compute

from ..arguments import DataArguments
from ..errors import UserError
from .checks import BadRow

PACKAGE = Path(__file__).resolve().parents[1]
# The code that turns a source row into a prepared row: any change to it makes new entries.
ROW_CODE = ["data/*.py", "answers.py", "arguments.py", "conversation.py", "images.py", "phi3_v/processing_phi3_v.py"]
# Data keys that do not change the rows of a split: how the rows are split afterwards, how a bad row is reported,
# and where entries are kept. A recipe's other keys (the run's: crops, freezing, logging, the output folder) are no
# data keys: the crops reach the key through the processor, the rest shape no row.
NOT_SHAPING = {"eval_fraction", "eval_split", "split_seed", "strict", "prepared_dir"}


def default_dir() -> Path:
    """``$PHI3V_PREPARED_DIR``, else beside ``datasets``' own cache (``$HF_HOME/datasets``), which a cluster puts on
    storage every node sees."""
    return Path(os.environ.get("PHI3V_PREPARED_DIR") or Path(datasets.config.HF_DATASETS_CACHE) / "phi3v-prepared")


def processor_digest(processor) -> str:
    """What of the processor decides token counts and checks: image settings, the tokenizer and the chat template."""
    tokenizer = processor.tokenizer
    digest = hashlib.sha256()
    digest.update(type(processor).__name__.encode())
    digest.update(processor.image_processor.to_json_string().encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    digest.update(vocab.encode())
    digest.update(json.dumps([str(t) for t in tokenizer.added_tokens_decoder.values()]).encode())
    for template in (getattr(processor, "chat_template", None), getattr(tokenizer, "chat_template", None)):
        digest.update(str(template).encode())
    return digest.hexdigest()


def code_digest() -> str:
    digest = hashlib.sha256()
    for pattern in ROW_CODE:
        for file in sorted(PACKAGE.glob(pattern)):
            digest.update(file.read_bytes())
    return digest.hexdigest()


def entry_key(table: datasets.Dataset, args, processor_id: str, max_length: int | None) -> str:
    shaping = {f.name: getattr(args, f.name) for f in dataclasses.fields(DataArguments) if f.name not in NOT_SHAPING}
    spec = [code_digest(), table._fingerprint, len(table), shaping, processor_id, max_length]
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:32]


def images_digest(kept: datasets.Dataset, skipped: list[dict]) -> str:
    """Size and modification time of every image the rows name (missing ones included: one may appear later), in row
    order, read a batch of rows at a time: memory stays flat however many rows there are."""
    digest = hashlib.sha256()

    def add(paths):
        for path in paths:
            try:
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path}\0missing\n".encode())

    for batch in kept.select_columns(["images"]).with_format("arrow").iter(batch_size=10_000):
        add(pyarrow.compute.list_flatten(batch.column("images")).to_pylist())
    for row in skipped:
        add(row["images"])
    return digest.hexdigest()


def load(folder: Path, check_images: bool = True):
    """(kept rows memory-mapped, skipped rows) of an entry whose image files are unchanged; None when there is none.
    An entry whose image files changed, or that cannot be read whole (a cut Arrow file, a damaged or missing
    ``skipped.json`` or ``state.json``), is discarded, said in one line for the damaged one, and prepared again.
    ``check_images=False`` reads an entry just written, whose digest ``save`` has just taken."""
    if not folder.exists():
        return None
    try:
        meta = json.loads((folder / "skipped.json").read_text())
        skipped = [(row["index"], row["id"], BadRow(row["kind"], row["detail"])) for row in meta["skipped"]]
        digest = meta["images_digest"]
        kept = datasets.load_from_disk(str(folder))
    except Exception as err:  # whatever the damage, the entry is rebuilt from its source
        print(f"The prepared rows in {folder} are damaged ({type(err).__name__}: {err}); discarding them.")
        discard(folder)
        return None
    if check_images and images_digest(kept, meta["skipped"]) != digest:
        discard(folder)
        return None
    return kept, skipped


def discard(folder: Path) -> None:
    """Move an entry aside in one rename (a process reading it keeps its open files), then delete it."""
    stale = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(folder, stale)
    except FileNotFoundError:  # another process moved it first
        return
    except OSError as err:
        raise unwritable(folder.parent, err) from None
    shutil.rmtree(stale, ignore_errors=True)


# Why a folder cannot take files: read-only, not a folder (or a file where a folder goes), no permission, full.
UNWRITABLE = {errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def unwritable(where: Path, err: OSError) -> UserError:
    """The prepared-rows folder cannot take an entry (read-only, full, not a folder): one line, with the way out."""
    return UserError(
        f"Cannot write the prepared rows to {where} ({err.strerror or err}): set prepared_dir (or PHI3V_PREPARED_DIR) "
        "to a writable folder with free space."
    )


def save(folder: Path, kept: datasets.Dataset, skipped: list[dict]) -> None:
    """Write an entry through a staging folder renamed into place: a reader finds a whole entry or none, and of two
    processes writing the same entry the first one's stays."""
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.part")
    try:
        kept.save_to_disk(str(staging), num_shards=1)  # one shard even when no row is kept
        (staging / "skipped.json").write_text(
            json.dumps({"skipped": skipped, "images_digest": images_digest(kept, skipped)})
        )
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / "skipped.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
