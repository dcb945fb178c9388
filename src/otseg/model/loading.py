"""Open any model file a user may hold: our folder format, a training checkpoint, or a reference `.pth`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from otseg.model.config import ModelConfig, apply_overrides
from otseg.model.segmentor import OTSeg

__all__ = ["load_model"]


def load_model(
    path: str | os.PathLike,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    allow_pickle: bool = False,
) -> OTSeg:
    """Load a model from `path`:

    - a folder with `config.json` + `model.safetensors` (`otseg convert`, `save_pretrained`);
    - an `iter_N.pt` written by `otseg train` (config, weights and class embeddings inside);
    - a reference release `.pth` (mmseg format): needs `preset` (the config it was trained with).
    """
    from otseg.model.checkpoint import load_pretrained, load_reference_checkpoint

    p = Path(path)
    if p.is_dir():
        return load_pretrained(p, overrides=overrides)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:
        raise ValueError(
            f"cannot read checkpoint {p} ({type(e).__name__}: {e}); if it is a trusted reference release file "
            "that holds pickled objects, pass --allow-pickle"
        ) from e
    if isinstance(ckpt, dict) and ckpt.get("format") == "otseg-train":
        cfg = ModelConfig.from_dict(ckpt["model_config"])
        if overrides:  # e.g. `otseg eval --set head.seen_bias=0`; were silently ignored for these checkpoints
            cfg = apply_overrides(cfg, overrides)
        model = OTSeg(cfg)
        result = model.load_state_dict(ckpt["model"], strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("text_encoder.")]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{p} does not match its config: missing {missing[:6]}, unexpected {result.unexpected_keys[:6]}"
            )
        model.set_class_embeddings(ckpt["class_embeddings"], class_names=ckpt.get("class_names"))
        return model
    if preset is None:
        raise ValueError(f"{p} looks like a reference checkpoint: say which preset it was trained with (--preset NAME)")
    from otseg.model.presets import get_preset

    cfg = get_preset(preset)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    model = OTSeg(cfg)
    load_reference_checkpoint(model, p, allow_pickle=allow_pickle)
    return model
