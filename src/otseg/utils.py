"""Small shared helpers: atomic file writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from otseg.errors import BadFileError

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_text", "describe_write_failure", "is_atomic_temp_file"]


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically (fsync'd)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates the file 0600; give the result the permissions a plain open() would (0666 minus umask).
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        # After a failure (or an exception in the writer) the partial temp file goes; a process killed
        # mid-write leaves it behind, but under a name (".NAME.XXXX.tmp") no reader takes for the real file.
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a power cut right after os.replace could otherwise undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_atomic_temp_file(name: str, target_name: str | None = None) -> bool:
    """Whether `name` is a temp file left by an interrupted atomic write (of `target_name`, if given)."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    return target_name is None or name.startswith(f".{target_name}.")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp_path)` and move the result onto `path` only if it succeeded: readers never see a
    half-written file, and a crash leaves the previous version intact.

    Raises:
        OSError: the write failed (a full disk, a quota, a file-size limit); one line naming `path` and the
            space left, whatever the writer's own error looked like (torch.save reports a full disk as
            "[enforce fail at inline_container.cc:...]").
    """
    try:
        with _atomic_path(path) as tmp:
            write(tmp)
    except (OSError, RuntimeError) as e:
        raise BadFileError(f"cannot write {path}: {describe_write_failure(e, Path(path).parent)}") from None


def describe_write_failure(error: BaseException, folder: Path) -> str:
    """Why a write failed, in words: the disk's free space, and the error's first line when it says something."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:
        first = (str(error).strip().splitlines() or [""])[0]
        reason = "the write failed" if "enforce fail" in first or not first else first
    space = f"; {free / 1e6:.1f} MB free on that disk" if free is not None else ""
    return f"{reason}{space}: free some space (the previous version of the file is kept)"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)` through a temp file: `path` is either the old file or the complete new one."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
