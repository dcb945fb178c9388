"""Class-embedding files: (K, N, D) text embeddings of K classes x N prompts, as the reference released them
(`.npy`, float16) or as otseg writes them (`.pt` read with `weights_only=True`, `.safetensors`).

The declared shape is checked before the data is read (the `.npy` and `.safetensors` headers: three dimensions,
each within `MAX_EMBEDDING_SHAPE`, and the data size the header implies against the file's), and a `.pt` is read
by the bounded torch reader (`otseg.formats.torch_pickle`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from otseg.config import MAX_CLASSES, MAX_TEMPLATES
from otseg.errors import BadValueError, MissingFileError
from otseg.formats.stored_tensors import check_stored_tensors
from otseg.formats.torch_pickle import check_torch_container
from otseg.utils import atomic_torch_save

__all__ = ["MAX_EMBEDDING_SHAPE", "load_class_embeddings", "read_cached_embeddings", "write_cached_embeddings"]

# The largest (K, N, D) a file may declare: the config's limits on classes and prompts, and CLIP's widest space.
MAX_EMBEDDING_SHAPE = (MAX_CLASSES, MAX_TEMPLATES, 8192)


def _check_declared_shape(shape: tuple[int, ...], p: Path) -> None:
    """A (K, N, D) shape declared by a file's header, checked before its data is read."""
    if len(shape) != 3:
        raise BadValueError(f"class embeddings in {p} must have shape (K, N, D), got {shape}")
    over = [f"{n} = {v:,} (at most {m:,})" for n, v, m in zip("KND", shape, MAX_EMBEDDING_SHAPE, strict=True) if v > m]
    if over:
        raise BadValueError(
            f"class embeddings in {p} declare shape {shape}: {', '.join(over)}; not a class-embedding file"
        )


def _npy_header(p: Path) -> None:
    """Check a `.npy` header (shape, dtype, and the data size it implies against the file) before numpy reads it."""
    try:
        with p.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise BadValueError(f".npy format version {version} (otseg reads 1.0 and 2.0)")
            start = f.tell()
    except (ValueError, OSError, EOFError) as e:
        raise BadValueError(f"cannot read class embeddings from {p}: {' '.join(str(e).split())}") from None
    _check_declared_shape(tuple(shape), p)
    if dtype.hasobject:
        raise BadValueError(f"class embeddings in {p} hold Python objects ({dtype}), not numbers")
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = p.stat().st_size - start
    if need != have:
        raise BadValueError(
            f"class embeddings in {p} declare {shape} {dtype} ({need:,} bytes) but the file holds {have:,} bytes of "
            "data: it is truncated or not what its header says"
        )


def load_class_embeddings(path: str | os.PathLike) -> Tensor:
    """Read class embeddings (K, N, D) from a reference `.npy`, a `.pt` tensor or a `.safetensors` file.

    The dtype is kept (the reference's VOC/Context files are float16, and those rounded values are part of
    the published numbers); `OTSeg.set_class_embeddings` upcasts exactly.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"class embedding file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".pt", ".pth", ".safetensors"):
        raise BadValueError(
            f"cannot read class embeddings from {p}: unknown extension {suffix!r}; use .npy, .pt or .safetensors"
        )
    t: Any  # what the file holds: checked to be a tensor below
    if suffix == ".npy":
        _npy_header(p)
    elif suffix in (".pt", ".pth"):
        check_torch_container(p, "class embedding file")
    try:
        if suffix == ".npy":
            t = torch.from_numpy(np.load(p, allow_pickle=False))
        elif suffix in (".pt", ".pth"):
            t = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(t, dict):
                t = t.get("class_embeddings", t.get("embeddings"))
        else:
            with safe_open(str(p), framework="pt") as f:  # the header only: shapes before any data is read
                keys = list(f.keys())
                # Our files name the tensor "class_embeddings"; a file holding a single tensor is unambiguous.
                key = "class_embeddings" if "class_embeddings" in keys else keys[0] if len(keys) == 1 else None
                shape = tuple(f.get_slice(key).get_shape()) if key is not None else None
            if shape is not None:
                _check_declared_shape(shape, p)
            t = load_file(str(p))[key] if key is not None else None
    # Any failure to parse (a bad pickle raises pickle.UnpicklingError, a bad zip RuntimeError, a bad .npy
    # header ValueError, safetensors its own error type) is reported the same way, naming the file.
    except ValueError as e:
        if str(p) in str(e):  # our own checks, which name the file already
            raise
        raise BadValueError(f"cannot read class embeddings from {p}: {type(e).__name__}: {e}") from e
    except Exception as e:
        raise BadValueError(f"cannot read class embeddings from {p}: {type(e).__name__}: {e}") from e
    check_stored_tensors(t, f"class embeddings in {p}")
    if not isinstance(t, Tensor):
        what = "no 'class_embeddings' tensor" if t is None else f"a {type(t).__name__}, not a tensor"
        raise BadValueError(f"class embeddings in {p}: the file holds {what}")
    _check_declared_shape(tuple(t.shape), p)
    if not t.is_floating_point():
        raise BadValueError(f"class embeddings in {p} must be floating point, got {t.dtype}")
    return t


# The cache of live-computed embeddings (`otseg.model.text.compute_class_embeddings`): one float32 (K, N, D)
# tensor per file, `torch.save`d. A cache entry is a convenience: any problem reading or writing it means a miss.


def read_cached_embeddings(path: Path, shape: tuple[int, int]) -> Tensor | None:
    """The cached (K, N, D) embeddings at `path` if they are there and have K, N = `shape`; else None (a file
    that does not load, or holds something else, is removed so that it is rewritten)."""
    if not path.is_file():
        return None
    try:
        check_torch_container(path, "cached embeddings")
        cached = torch.load(path, map_location="cpu", weights_only=True)
        check_stored_tensors(cached, str(path))
    except Exception:  # a corrupt cache entry is recomputed, never fatal
        cached = None
    # A file that loads but holds something else (truncated by hand, overwritten) is as corrupt as one that
    # does not load: only a float32 (K, N, D) tensor of the expected K and N is a hit.
    if isinstance(cached, Tensor) and cached.dtype == torch.float32 and cached.dim() == 3 and cached.shape[:2] == shape:
        return cached
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
    return None


def write_cached_embeddings(embeddings: Tensor, path: Path) -> None:
    """Store computed embeddings atomically; a read-only cache folder is no reason to fail."""
    with contextlib.suppress(OSError):
        atomic_torch_save(embeddings, path)
