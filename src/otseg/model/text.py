"""Class text embeddings: live computation with the CLIP text tower, `.npy` loading, cache."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from otseg.clip.tokenizer import tokenize
from otseg.config import resolve_templates
from otseg.data.classes import validate_class_names
from otseg.formats.class_embeddings import read_cached_embeddings, write_cached_embeddings


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
    if use_cache:
        cached = read_cached_embeddings(path, (len(names), len(templates)))
        if cached is not None:
            return cached
    texts = [t.format(n) for n in names for t in templates]
    device = next(text_encoder.parameters()).device
    chunks = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenize(texts[i : i + batch_size]).to(device)
        chunks.append(F.normalize(text_encoder(tokens).float(), dim=-1).cpu())
    emb = F.normalize(torch.cat(chunks).reshape(len(names), len(templates), -1), dim=-1)
    if use_cache:
        write_cached_embeddings(emb, path)
    return emb
