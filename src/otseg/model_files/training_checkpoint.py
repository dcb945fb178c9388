"""Training checkpoints (`iter_N.pt`, written by `otseg train`): a `torch.save`d dict, read with
`weights_only=True`, holding `"format": "otseg-train"`, the model config, weights, class embeddings, optimiser and
RNG states, and the SHA-256 of the weights and class embeddings (checked on reading).
Its one home: built, written and read here, by the trainer and by `load_model` alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from otseg.config import ModelConfig, apply_overrides
from otseg.formats.state_dict import check_state_dict_fits, tensor_digest, verify_digest
from otseg.formats.torch_pickle import safe_torch_load
from otseg.model.segmentor import OTSeg
from otseg.utils import atomic_torch_save

__all__ = [
    "TRAINING_FORMAT",
    "UnreadableCheckpointError",
    "checkpoint_digest",
    "is_training_checkpoint",
    "model_from_training_checkpoint",
    "read_training_checkpoint",
    "training_checkpoint",
    "verify_training_digest",
    "write_training_checkpoint",
]

TRAINING_FORMAT = "otseg-train"
_STATES = ("optimizer", "scaler", "rng", "train_config", "model_config")  # besides the weights, in the file's order


class UnreadableCheckpointError(ValueError):
    """The checkpoint file itself cannot be read (truncated, corrupt, holds pickled objects)."""


def training_checkpoint(
    *, step: int, model_state: dict[str, Tensor], class_embeddings: Tensor, class_names: list[str], **states: Any
) -> dict[str, Any]:
    """An `iter_N.pt`'s contents: `model_state` without the frozen text tower, `class_embeddings` (K, P, C), their
    SHA-256 (checked on loading), and `states`: optimizer, scaler, rng (plain values: weights_only loading),
    train_config, model_config."""
    if set(states) != set(_STATES):
        raise TypeError(f"training_checkpoint takes the states {_STATES}, got {sorted(states)}")
    digest = checkpoint_digest(model_state, class_embeddings)
    head = {"format": TRAINING_FORMAT, "step": step, "model": model_state, "class_embeddings": class_embeddings}
    return {**head, "sha256": digest, **{k: states[k] for k in _STATES}, "class_names": class_names}


def write_training_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `checkpoint` (`training_checkpoint`) to `path` atomically: a crash leaves the old file or none."""
    atomic_torch_save(checkpoint, path)


def is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == TRAINING_FORMAT


def read_training_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read an `iter_N.pt`: one line naming the file when its bytes cannot be read (`UnreadableCheckpointError`),
    when it is no training checkpoint or lacks a `required` entry (ValueError). `verify_training_digest` checks it."""
    hint = "checkpoints written by otseg train never hold any, so this is not one of them; pass the iter_N.pt of a "
    hint += "training run"
    try:
        ckpt = safe_torch_load(path, "checkpoint", pickle_hint=hint)
    except ValueError as e:
        raise UnreadableCheckpointError(str(e)) from e
    if not is_training_checkpoint(ckpt):
        raise ValueError(f"{path} is not an otseg training checkpoint (an iter_N.pt written by otseg train)")
    _check_entries(ckpt, path, required)
    return ckpt


def _check_entries(ckpt: dict[str, Any], path: str | os.PathLike, required: tuple[str, ...]) -> None:
    absent = [k for k in required if k not in ckpt]
    if absent:
        raise ValueError(f"training checkpoint {path} lacks {absent}: it is damaged; use another iter_N.pt of the run")


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
    _check_entries(ckpt, p, ("model_config", "model", "class_embeddings"))
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
