"""State dicts: the one check that a state dict fits a module, and the SHA-256 of a set of tensors.

Both are used by every reader of weights (our folders, training checkpoints, OpenAI CLIP files), so that a file
that does not fit fails the same way everywhere: one line naming the file, the keys and the shapes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from otseg.errors import BadValueError

__all__ = ["check_state_dict_fits", "tensor_digest", "verify_digest"]


def _keys(keys: list[str], limit: int = 5) -> str:
    shown = repr(keys[:limit])
    return shown[:-1] + ", ...]" if len(keys) > limit else shown


def check_state_dict_fits(
    model: nn.Module | Mapping[str, Tensor],
    state: Mapping[str, Any],
    source: str,
    *,
    may_be_missing: tuple[str, ...] | Callable[[str], bool] = (),
    key_prefix: str = "",
    key_name: Callable[[str], str] | None = None,
    unexpected: Sequence[str] = (),
    fix: str = "",
) -> list[str]:
    """Check `state` against a module's state dict (or an expected `{key: tensor}`) key for key and shape for
    shape, before `load_state_dict`, whose own errors are multi-line.

    Args:
        model: the receiving module, or its expected state dict.
        state: what a file holds.
        source: what the file is, e.g. "checkpoint runs/x/iter_8.pt": the message starts with it.
        may_be_missing: key prefixes (or a predicate) of model keys the file may lack (e.g. the frozen text
            tower is never saved; CLIP files have no VPT prompts).
        key_prefix: put before key names in the message, so that they read as the file names them.
        key_name: instead of `key_prefix`, how a model key is named in the file (e.g. the reference's names).
        unexpected: file keys already known to have no place in the model (named as the file names them).
        fix: what the user can do, appended to the message.

    Returns:
        The model keys that were allowed to be missing and are.

    Raises:
        ValueError: one line: missing keys, unexpected keys and shape mismatches (first few of each).
    """
    if not isinstance(state, Mapping):
        raise BadValueError(f"{source}: its weights are a {type(state).__name__}, not a dict of named tensors")
    odd = next((k for k in state if not isinstance(k, str)), None)
    if odd is not None:  # names are concatenated and compared as text below
        raise BadValueError(f"{source}: a weight is named {str(odd)[:60]!r} ({type(odd).__name__}), not a string")
    ours = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    allowed = may_be_missing if callable(may_be_missing) else (lambda k, p=may_be_missing: k.startswith(p))
    name = key_name or (lambda k: key_prefix + k)
    absent = [k for k in ours if k not in state]
    missing = [name(k) for k in absent if not allowed(k)]
    unexpected = [*unexpected, *(name(k) for k in state if k not in ours)]
    shapes = [
        f"{name(k)!r} {tuple(v.shape)} vs the model's {tuple(ours[k].shape)}"
        for k, v in state.items()
        if k in ours and isinstance(v, Tensor) and v.shape != ours[k].shape
    ]
    not_tensors = [name(k) for k, v in state.items() if not isinstance(v, Tensor)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) {_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) {_keys(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:3])}")
    if not_tensors:
        problems.append(f"{len(not_tensors)} entries that are not tensors {_keys(not_tensors)}")
    if problems:
        raise BadValueError(f"{source} does not fit this model: {', '.join(problems)}" + (f"; {fix}" if fix else ""))
    return [k for k in absent if allowed(k)]


def tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 (hex) of named tensors: every name, dtype, shape and the bytes of every value, in name order.

    Two dicts have the same digest exactly when they hold the same tensors bit for bit (whatever the device or
    memory layout), so a digest stored beside the weights detects any byte that changed on disk.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # the raw bytes, without a copy
    return h.hexdigest()


def verify_digest(tensors: Mapping[str, Tensor], expected: Any, source: str) -> None:
    """Refuse tensors whose SHA-256 differs from the one written beside them (files written before digests
    existed carry none and are accepted)."""
    if expected is None:
        return
    if not isinstance(expected, str) or tensor_digest(tensors) != expected:
        raise BadValueError(
            f"{source}: its tensors do not match the SHA-256 written with them: the file is corrupt (changed on "
            "disk or in transfer); copy it again or use another checkpoint"
        )
