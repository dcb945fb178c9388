"""Training checkpoints (`iter_N.pt`, written by `otseg train`): a `torch.save`d dict, read with
`weights_only=True`, holding `"format": "otseg-train"`, the model config, weights, class embeddings, optimiser and
RNG states, and the SHA-256 of the weights and class embeddings (checked on reading).

The one home of the format: `training_checkpoint` builds the dict, `write_training_checkpoint` writes it,
`read_training_checkpoint` reads it back (the trainer's resume and `model_from_training_checkpoint` alike).
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
    "check_training_entries",
    "checkpoint_digest",
    "is_training_checkpoint",
    "model_from_training_checkpoint",
    "read_training_checkpoint",
    "training_checkpoint",
    "verify_training_digest",
    "write_training_checkpoint",
]

TRAINING_FORMAT = "otseg-train"


class UnreadableCheckpointError(ValueError):
    """The checkpoint file itself cannot be read (truncated, corrupt, holds pickled objects)."""


def training_checkpoint(
    *,
    step: int,
    model_state: dict[str, Tensor],
    class_embeddings: Tensor,
    class_names: list[str],
    model_config: dict[str, Any],
    train_config: dict[str, Any],
    optimizer: dict[str, Any],
    scaler: dict[str, Any],
    rng: dict[str, Any],
) -> dict[str, Any]:
    """The contents of an `iter_N.pt`: what the trainer resumes from and what `load_model` opens.

    `model_state` leaves out the frozen text tower; `class_embeddings` is (K, P, C); `rng` holds plain values only
    (tensors, lists, ints), so that the file loads with `weights_only=True`.
    """
    return {
        "format": TRAINING_FORMAT,
        "step": step,
        "model": model_state,
        "class_embeddings": class_embeddings,
        # Loading verifies it: a checkpoint with flipped bytes is refused instead of silently used.
        "sha256": checkpoint_digest(model_state, class_embeddings),
        "optimizer": optimizer,
        "scaler": scaler,
        "rng": rng,
        "train_config": train_config,
        "model_config": model_config,
        "class_names": class_names,
    }


def write_training_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `checkpoint` (from `training_checkpoint`) to `path` atomically: a crash leaves the old file or none."""
    atomic_torch_save(checkpoint, path)
    return Path(path)


def is_training_checkpoint(obj: Any) -> bool:
    """Whether a loaded torch file is a training checkpoint (rather than, say, a reference release)."""
    return isinstance(obj, dict) and obj.get("format") == TRAINING_FORMAT


def read_training_checkpoint(
    path: str | os.PathLike, required: tuple[str, ...] = ("model_config", "model", "class_embeddings")
) -> dict[str, Any]:
    """Read an `iter_N.pt` (`weights_only=True`) and check that it is one and holds the `required` entries; the
    tensors' SHA-256 is checked by `verify_training_digest`, after the caller has named what does not fit.

    Raises:
        FileNotFoundError: no such file.
        UnreadableCheckpointError: the bytes cannot be read (truncated, corrupt, pickled objects).
        ValueError: the file is not a training checkpoint, or lacks a required entry.
    """
    p = Path(path)
    try:
        ckpt = safe_torch_load(
            p,
            "checkpoint",
            pickle_hint="checkpoints written by otseg train never hold any, so this is not one of them; pass "
            "the iter_N.pt of a training run",
        )
    except ValueError as e:
        raise UnreadableCheckpointError(str(e)) from e
    if not is_training_checkpoint(ckpt):
        raise ValueError(f"{p} is not an otseg training checkpoint (an iter_N.pt written by otseg train)")
    check_training_entries(ckpt, p, required)
    return ckpt


def check_training_entries(ckpt: dict[str, Any], p: Path, required: tuple[str, ...]) -> None:
    """Refuse a training checkpoint that lacks one of the `required` entries, in one line naming the file."""
    absent = [k for k in required if k not in ckpt]
    if absent:
        raise ValueError(f"training checkpoint {p} lacks {absent}: it is damaged; use another iter_N.pt of the run")


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
    check_training_entries(ckpt, p, ("model_config", "model", "class_embeddings"))
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
