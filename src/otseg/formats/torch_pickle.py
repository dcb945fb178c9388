"""PyTorch's own file format (a zip of pickled records, `torch.save`): the one safe reader.

Every `.pt` / `.pth` otseg opens goes through `safe_torch_load`: `torch.load(weights_only=True)` unless the user
allows pickle for a file they trust, with one-line errors naming the file. Memory stays bounded by the file's size:
compressed records (which `torch.save` never writes, and which could inflate without bound) and the pre-1.6 format
(whose declared storage sizes torch allocates before reading them) are refused before loading, and the tensors
read are checked against their storages (`otseg.formats.stored_tensors`) before anyone converts them.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from otseg.errors import BadValueError, MissingFileError
from otseg.formats.stored_tensors import check_stored_tensors

__all__ = ["check_torch_container", "first_sentence", "safe_torch_load"]

_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
# How torch.save's pre-1.6 (non-zip) format starts: its magic number, pickled with protocol 2 (torch.serialization).
_LEGACY_START = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]


def check_torch_container(p: Path, what: str, allow_pickle: bool = False) -> None:
    """Refuse, before torch reads it, a `torch.save` file whose reading would cost more than its size: a zip whose
    records inflate beyond the file (torch.save stores records uncompressed) or, unless pickle is allowed for a
    trusted file, the pre-1.6 format (torch allocates the storage sizes it declares before reading them)."""
    size = p.stat().st_size
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as archive:
                declared = sum(info.file_size for info in archive.infolist())
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            reason = first_sentence(str(e))
            raise BadValueError(f"cannot read {what} {p}: {reason}; the file is truncated or corrupt") from None
        if declared > size:
            raise BadValueError(
                f"{what} {p}: its records inflate to {declared:,} bytes from a file of {size:,} (compressed records, "
                "which torch.save never writes); refused unread"
            )
        return
    with p.open("rb") as f:
        start = f.read(len(_LEGACY_START))
    if start == _LEGACY_START and not allow_pickle:
        raise BadValueError(
            f"{what} {p} is in PyTorch's pre-1.6 file format, whose declared sizes torch allocates before reading; "
            "re-save it with a current torch (torch.save(torch.load(path), path) where you trust the file), or pass "
            "--allow-pickle (allow_pickle=True) for a file you trust"
        )


def safe_torch_load(
    path: str | os.PathLike, what: str = "checkpoint", allow_pickle: bool = False, pickle_hint: str | None = None
) -> Any:
    """`torch.load(path, weights_only=not allow_pickle)` on the CPU, with one-line errors naming the file.

    Args:
        what: the kind of file, for messages ("checkpoint", "reference checkpoint", ...).
        allow_pickle: unpickle arbitrary objects (only for trusted files: unpickling can run code).
        pickle_hint: what to tell the user when safe loading refuses pickled objects; default: pass --allow-pickle.

    Raises:
        FileNotFoundError: `path` is not a file.
        ValueError: the file holds pickled objects that weights_only loading refuses, or it cannot be read
            (truncated, corrupt, not a torch file), or reading it would cost more memory than its size implies
            (compressed records, the pre-1.6 format, tensors viewing more than they store).
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"{what} {p} does not exist")
    check_torch_container(p, what, allow_pickle)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Unsupported operand" in text:
            # Bytes that are no pickle opcode at all: another kind of file (an image, a text file), not a pickle
            # of objects, so --allow-pickle would not help.
            raise BadValueError(
                f"cannot read {what} {p}: it is not a PyTorch file (not a pickle at all); give the .pt / .pth file "
                "itself"
            ) from e
        if allow_pickle or "Weights only load failed" not in text:
            raise BadValueError(f"cannot read {what} {p}: {first_sentence(text)}; the file may be corrupt") from e
        found = _UNSAFE_GLOBAL.search(text)
        objects = f" (e.g. {found.group(1)})" if found else ""
        hint = pickle_hint or (
            "if the file comes from a source you trust, retry with --allow-pickle (allow_pickle=True in Python); "
            "unpickling can run arbitrary code"
        )
        raise BadValueError(
            f"{what} {p} holds pickled Python objects{objects} that safe loading (torch.load with "
            f"weights_only=True) refuses: {hint}"
        ) from e
    except Exception as e:  # torch raises RuntimeError / EOFError / OSError / ... for truncated or foreign files
        raise BadValueError(
            f"cannot read {what} {p} ({type(e).__name__}: {first_sentence(str(e))}); the file is truncated, "
            "corrupt or not a PyTorch file (an interrupted copy or download?)"
        ) from e
    check_stored_tensors(obj, f"{what} {p}")
    return obj


def first_sentence(text: str) -> str:
    """The first sentence of a (possibly long, multi-line) library message, on one line."""
    flat = " ".join(text.split())
    cut = flat.find(". ")
    return (flat[:cut] if 0 < cut < 300 else flat[:300]) or "no message"
