"""Open any model file a user may hold: our folder format, a training checkpoint, or a reference `.pth`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from otseg.config import apply_overrides
from otseg.errors import BadValueError
from otseg.formats.torch_pickle import safe_torch_load
from otseg.model.presets import get_preset
from otseg.model.segmentor import OTSeg
from otseg.model_files.otseg_folder import load_pretrained
from otseg.model_files.reference_pth import load_reference_checkpoint
from otseg.model_files.training_checkpoint import is_training_checkpoint, model_from_training_checkpoint

__all__ = ["load_model"]


def load_model(
    path: str | os.PathLike,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    trust_unverified: bool = False,
) -> OTSeg:
    """Load a model from `path`:

    - a folder with `config.json` + `model.safetensors` (`otseg convert`, `save_pretrained`);
    - an `iter_N.pt` written by `otseg train` (config, weights and class embeddings inside);
    - a reference release `.pth` (mmseg format): needs `preset` (the config it was trained with).

    otseg's own files carry a SHA-256 of their tensors, checked on reading; one that carries none is refused
    unless `trust_unverified` (a reference `.pth` never carries one and is read as it is).
    """
    p = Path(path)
    if p.is_dir():
        return load_pretrained(p, overrides=overrides, trust_unverified=trust_unverified)
    ckpt = safe_torch_load(p, "checkpoint", allow_pickle=allow_pickle)
    if is_training_checkpoint(ckpt):
        return model_from_training_checkpoint(ckpt, p, overrides, trust_unverified)
    if preset is None:
        raise BadValueError(
            f"{p} looks like a reference checkpoint: say which preset it was trained with (--preset NAME)"
        )

    cfg = get_preset(preset)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    model = OTSeg(cfg)
    load_reference_checkpoint(model, p, allow_pickle=allow_pickle)
    return model
