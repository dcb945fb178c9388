"""Class-embedding files: (K, N, D) text embeddings of K classes x N prompts, as the reference released them
(`.npy`, float16) or as otseg writes them (`.pt` read with `weights_only=True`, `.safetensors`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from otseg.utils import atomic_torch_save

__all__ = ["load_class_embeddings", "read_cached_embeddings", "write_cached_embeddings"]


def load_class_embeddings(path: str | os.PathLike) -> Tensor:
    """Read class embeddings (K, N, D) from a reference `.npy`, a `.pt` tensor or a `.safetensors` file.

    The dtype is kept (the reference's VOC/Context files are float16, and those rounded values are part of
    the published numbers); `OTSeg.set_class_embeddings` upcasts exactly.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"class embedding file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".pt", ".pth", ".safetensors"):
        raise ValueError(
            f"cannot read class embeddings from {p}: unknown extension {suffix!r}; use .npy, .pt or .safetensors"
        )
    t: Any  # what the file holds: checked to be a tensor below
    try:
        if suffix == ".npy":
            t = torch.from_numpy(np.load(p, allow_pickle=False))
        elif suffix in (".pt", ".pth"):
            t = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(t, dict):
                t = t.get("class_embeddings", t.get("embeddings"))
        else:
            tensors = load_file(str(p))
            # Our files name the tensor "class_embeddings"; a file holding a single tensor is unambiguous.
            t = tensors.get("class_embeddings", next(iter(tensors.values())) if len(tensors) == 1 else None)
    # Any failure to parse (a bad pickle raises pickle.UnpicklingError, a bad zip RuntimeError, a bad .npy
    # header ValueError, safetensors its own error type) is reported the same way, naming the file.
    except Exception as e:
        raise ValueError(f"cannot read class embeddings from {p}: {type(e).__name__}: {e}") from e
    if not isinstance(t, Tensor):
        what = "no 'class_embeddings' tensor" if t is None else f"a {type(t).__name__}, not a tensor"
        raise ValueError(f"class embeddings in {p}: the file holds {what}")
    if t.dim() != 3:
        raise ValueError(f"class embeddings in {p} must have shape (K, N, D), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"class embeddings in {p} must be floating point, got {t.dtype}")
    return t


# The cache of live-computed embeddings (`otseg.model.text.compute_class_embeddings`): one float32 (K, N, D)
# tensor per file, `torch.save`d. A cache entry is a convenience: any problem reading or writing it means a miss.


def read_cached_embeddings(path: Path, shape: tuple[int, int]) -> Tensor | None:
    """The cached (K, N, D) embeddings at `path` if they are there and have K, N = `shape`; else None (a file
    that does not load, or holds something else, is removed so that it is rewritten)."""
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
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
