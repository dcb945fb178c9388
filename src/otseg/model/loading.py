"""Open any model file a user may hold: our folder format, a training checkpoint, or a reference `.pth`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from otseg.config import ModelConfig, apply_overrides
from otseg.model.checkpoint import (
    check_state_dict_fits,
    load_pretrained,
    load_reference_checkpoint,
    safe_torch_load,
    verify_training_digest,
)
from otseg.model.presets import get_preset
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

    p = Path(path)
    if p.is_dir():
        return load_pretrained(p, overrides=overrides)
    ckpt = safe_torch_load(p, "checkpoint", allow_pickle=allow_pickle)
    if isinstance(ckpt, dict) and ckpt.get("format") == "otseg-train":
        return _from_training_checkpoint(ckpt, p, overrides)
    if preset is None:
        raise ValueError(f"{p} looks like a reference checkpoint: say which preset it was trained with (--preset NAME)")

    cfg = get_preset(preset)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    model = OTSeg(cfg)
    load_reference_checkpoint(model, p, allow_pickle=allow_pickle)
    return model


def _from_training_checkpoint(ckpt: dict[str, Any], p: Path, overrides: dict[str, Any] | None) -> OTSeg:
    """Build the model of an `iter_N.pt` (its own config, `overrides` applied) and load weights + class embeddings."""

    missing = [k for k in ("model_config", "model", "class_embeddings") if k not in ckpt]
    if missing:
        raise ValueError(f"training checkpoint {p} lacks {missing}: it was not written by otseg train, or is damaged")
    try:
        cfg = saved = ModelConfig.from_dict(ckpt["model_config"])
        if overrides:  # e.g. `otseg eval --set head.seen_bias=0`; were silently ignored for these checkpoints
            cfg = apply_overrides(cfg, overrides)
    except (TypeError, KeyError) as e:
        raise ValueError(f"{p}: its model_config cannot be used: {e}") from e
    model = OTSeg(cfg)
    check_state_dict_fits(
        model,
        ckpt["model"],
        f"training checkpoint {p}",
        fix="--set overrides of the architecture (vision.*, head.* sizes) must match the training run's; drop them",
    )
    model.load_state_dict(ckpt["model"], strict=False)  # strict=False: the frozen text tower is never saved
    emb = ckpt["class_embeddings"]
    names = ckpt.get("class_names")
    shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else None
    expected = (cfg.num_prompts, cfg.head.embed_dim)
    if shape is None or len(shape) != 3 or shape[1:] != expected or (names is not None and len(names) != shape[0]):
        raise ValueError(
            f"training checkpoint {p}: class_embeddings {shape} do not fit its model (expected (K, {expected[0]}, "
            f"{expected[1]}) with K = {len(names) if names is not None else 'the number of classes'}); the file is "
            "damaged or was edited: use another checkpoint of the run"
        )
    # Last, after the checks that name what does not fit: the bytes must be the ones written.
    verify_training_digest(ckpt, f"training checkpoint {p}")
    overridden = list(cfg.class_names) != list(saved.class_names)
    if overridden and (names is None or list(cfg.class_names) != list(names)):
        # The classes were overridden (e.g. `otseg eval --dataset custom` brings its own): the stored embeddings
        # belong to the training classes, so leave the model without any; the caller must embed the new
        # names (otseg eval: --clip or --embeddings) instead of silently scoring the old classes.
        return model
    model.set_class_embeddings(emb, class_names=names)
    return model
