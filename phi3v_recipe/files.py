"""Files written whole or not at all, with the modes the user's umask gives."""

import contextlib
import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import UserError


def write_atomically(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a uniquely named file beside it, renamed into place: a reader sees the whole
    file or none, and two processes writing the same path at once never mix their bytes."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        partial.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)  # only left when the write failed (a full disk)
    return path


def follow_umask(folder: str | Path) -> None:
    """Give the weight files in ``folder`` the mode the user's umask gives new files: safetensors writes them 0600
    whatever the umask, so a model saved for a team (or a container's other user) could not be read."""
    umask = os.umask(0)
    os.umask(umask)
    for file in Path(folder).glob("*.safetensors"):
        os.chmod(file, 0o666 & ~umask)


def is_disk_full(err: BaseException) -> bool:
    """A write that failed for want of space (Rust writers, such as the tokenizer's, say it only in the message)."""
    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err)


@contextlib.contextmanager
def full_disk_is_one_line(folder: Path, doing: str, advice: str | Callable[[], str]):
    """A full disk while ``doing`` is one line naming ``folder`` (and the file, when the error says it) and what to do:
    ``advice``, or what it returns when called then. Any other error passes through."""
    try:
        yield
    except Exception as err:
        if not is_disk_full(err):
            raise
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        advice = advice() if callable(advice) else advice
        raise UserError(
            f"No space left on the disk of {folder} while {doing}{where}. Free some space, or {advice}."
        ) from None
