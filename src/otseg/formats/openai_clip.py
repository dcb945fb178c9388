"""OpenAI CLIP checkpoints (`ViT-B-16.pt`): read into a float32 state dict with OpenAI's key names.

The released files are TorchScript archives with fp16 weights; the reference reads them with
`torch.jit.load(path).float().state_dict()`, which runs code stored in the file. We read the same tensors with a
restricted unpickler that executes nothing (`otseg.formats.torchscript`). Plain `torch.save`d state dicts are
accepted too (read with `weights_only=True`). Either way every tensor is checked against the bytes the file stores
(`otseg.formats.stored_tensors`) before it is converted to float32. Mapping the keys onto the towers is
`otseg.clip.loading`'s job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from otseg.errors import BadValueError, MissingFileError
from otseg.formats.stored_tensors import check_stored_tensors
from otseg.formats.torch_pickle import check_torch_container
from otseg.formats.torchscript import TorchScriptReadError, is_torchscript_archive, read_torchscript_state_dict

__all__ = ["EXPECTED_CLIP_FORMATS", "read_clip_state_dict"]

StateDict = dict[str, Tensor]
PathLike = str | os.PathLike[str]

_SCALAR_KEYS = ("input_resolution", "context_length", "vocab_size")
EXPECTED_CLIP_FORMATS = (
    "an OpenAI CLIP TorchScript archive (like the released ViT-B-16.pt) or a state dict saved with torch.save"
)


def read_clip_state_dict(path: PathLike) -> StateDict:
    """Read a CLIP checkpoint into a float32 state dict with OpenAI key names.

    Accepts a TorchScript archive (its tensors read without running its code, see `otseg.formats.torchscript`)
    or a `torch.save`d state dict (read with `weights_only=True`, optionally wrapped as `{"state_dict": ...}`,
    a `module.` prefix is stripped). Floating tensors become float32 (the reference's `.float()`); the integer
    scalars `input_resolution`, `context_length` and `vocab_size` are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"CLIP checkpoint not found: {path} (expected {EXPECTED_CLIP_FORMATS})")
    if is_torchscript_archive(path):
        # A TorchScript archive is read by the restricted reader only; its refusal is final (never retried
        # with a loader that could run the file's code).
        try:
            raw: Mapping[str, object] = read_torchscript_state_dict(path)
        except TorchScriptReadError as err:
            raise BadValueError(f"cannot read CLIP weights: {err}") from None
        return _clean_state_dict(raw, path)
    check_torch_container(path, "CLIP weights")  # before torch reads it: no record may inflate beyond the file
    try:
        raw = _read_plain(path)
    except Exception as err:  # any failure means "not this format"; reported with the formats expected
        raise BadValueError(
            f"cannot read CLIP weights from {path}: expected {EXPECTED_CLIP_FORMATS}; "
            f"torch.load(weights_only=True) said {type(err).__name__}: {_first_line(err)}"
        ) from None
    check_stored_tensors(raw, f"CLIP weights {path}")  # before .float() converts them
    return _clean_state_dict(raw, path)


def _read_plain(path: Path) -> Mapping[str, object]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise TypeError(f"the file holds a {type(obj).__name__}, not a state dict")
    return obj


def _clean_state_dict(raw: Mapping[str, object], path: Path) -> StateDict:
    out: StateDict = {}
    for key, value in raw.items():
        if not isinstance(value, Tensor):
            kind = type(value).__name__
            raise BadValueError(f"{path}: entry {key!r} is a {kind}, not a tensor; expected {EXPECTED_CLIP_FORMATS}")
        key = key.removeprefix("module.")
        if key in _SCALAR_KEYS and value.dim() == 0 and not value.is_floating_point():
            continue
        value = value.detach()
        out[key] = value.float() if value.is_floating_point() else value
    if not out:
        raise BadValueError(f"{path}: the checkpoint holds no tensors; expected {EXPECTED_CLIP_FORMATS}")
    return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"
