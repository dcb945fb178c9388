"""Training checkpoints (`iter_N.pt`, written by `otseg train`): a `torch.save`d dict, read with
`weights_only=True`, holding `"format": "otseg-train"`, the model config, weights, class embeddings, optimiser and
RNG states, and the SHA-256 of the weights and class embeddings (checked on reading).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from otseg.config import ModelConfig, apply_overrides
from otseg.formats.state_dict import check_state_dict_fits, tensor_digest, verify_digest
from otseg.model.segmentor import OTSeg

__all__ = ["TRAINING_FORMAT", "checkpoint_digest", "model_from_training_checkpoint", "verify_training_digest"]

TRAINING_FORMAT = "otseg-train"


def checkpoint_digest(model_state: dict[str, Tensor], class_embeddings: Tensor) -> str:
    """The SHA-256 a training checkpoint (`iter_N.pt`) carries: its weights and its class embeddings."""
    return tensor_digest({**{f"model.{k}": v for k, v in model_state.items()}, "class_embeddings": class_embeddings})


def verify_training_digest(ckpt: dict[str, Any], source: str) -> None:
    """Check an `iter_N.pt`'s tensors against its stored SHA-256 (older checkpoints carry none)."""
    expected = ckpt.get("sha256")
    if expected is None:
        return
    model_state, emb = ckpt.get("model"), ckpt.get("class_embeddings")
    if not isinstance(model_state, dict) or not isinstance(emb, Tensor):
        raise ValueError(f"{source}: its weights or class embeddings are missing; the file is damaged")
    tensors = {f"model.{k}": v for k, v in model_state.items() if isinstance(v, Tensor)}
    verify_digest({**tensors, "class_embeddings": emb}, expected, source)


def model_from_training_checkpoint(ckpt: dict[str, Any], p: Path, overrides: dict[str, Any] | None) -> OTSeg:
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
        may_be_missing=("text_encoder.",),
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
