"""Class text embeddings: live computation with the CLIP text tower, `.npy` loading, cache."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from otseg.clip.tokenizer import tokenize
from otseg.config import resolve_templates
from otseg.data.classes import validate_class_names
from otseg.utils import atomic_torch_save


def _weights_signature(module: torch.nn.Module) -> tuple:
    """Cheap identity of a module's current weights: storage, in-place version counter, dtype, shape.

    Any in-place update (`load_state_dict`, an optimizer step, `p.add_()`) bumps a tensor's `_version`, and
    re-assigning `p.data` or moving the module changes `data_ptr`, so a changed signature means the weights
    may have changed and the (expensive) hash must be recomputed.
    """
    return tuple(
        (name, t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape))
        for name, t in module.state_dict(keep_vars=True).items()
    )


def _weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, values).

    Memoised on the module, but only for as long as its weights are unchanged (see `_weights_signature`):
    a memo that outlived a weight update would make the cache return embeddings of the old weights.
    Hashing the ViT-B/16 text tower takes about a second, hence the memo.
    """
    signature = _weights_signature(module)
    memo = getattr(module, "_otseg_fingerprint", None)
    if memo is not None and memo[0] == signature:
        return memo[1]
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        # The dtype is part of the key: fp16 and fp32 towers holding the same values embed differently.
        h.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    digest = h.hexdigest()
    object.__setattr__(module, "_otseg_fingerprint", (signature, digest))
    return digest


def cache_dir() -> Path:
    """Where computed embeddings are cached: $OTSEG_CACHE_DIR, else ~/.cache/otseg."""
    root = os.environ.get("OTSEG_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "otseg")
    return Path(root) / "text_embeddings"


@torch.no_grad()
def compute_class_embeddings(
    text_encoder: torch.nn.Module,
    class_names: Sequence[str],
    templates: Sequence[str],
    use_cache: bool = True,
    batch_size: int = 256,
) -> Tensor:
    """Embed every (class, template) text with the CLIP text tower, as the reference's notebook did.

    Each text embedding is L2-normalised, reshaped to (K, N, D), and normalised again.
    Results are cached on disk keyed by the text weights, the templates and the class names.

    Returns:
        (K, N, D) float32.
    """

    names = validate_class_names(class_names)
    templates = resolve_templates(templates)
    key = hashlib.sha256(json.dumps([_weights_fingerprint(text_encoder), list(templates), names]).encode()).hexdigest()[
        :32
    ]
    path = cache_dir() / f"{key}.pt"
    if use_cache and path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt cache entry is recomputed, never fatal
            cached = None
        # A file that loads but holds something else (truncated by hand, overwritten) is as corrupt as one
        # that does not load: only a float32 (K, N, D) tensor of the expected K and N is a hit.
        if (
            isinstance(cached, Tensor)
            and cached.dtype == torch.float32
            and cached.dim() == 3
            and cached.shape[:2] == (len(names), len(templates))
        ):
            return cached
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    texts = [t.format(n) for n in names for t in templates]
    device = next(text_encoder.parameters()).device
    chunks = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenize(texts[i : i + batch_size]).to(device)
        chunks.append(F.normalize(text_encoder(tokens).float(), dim=-1).cpu())
    emb = F.normalize(torch.cat(chunks).reshape(len(names), len(templates), -1), dim=-1)
    if use_cache:
        with contextlib.suppress(OSError):  # a read-only home is no reason to fail
            atomic_torch_save(emb, path)
    return emb


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
