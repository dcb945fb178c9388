"""Training checkpoints (`iter_N.pt`, written by `otseg train`): a `torch.save`d dict, read with
`weights_only=True`, holding `"format": "otseg-train"`, the model config, weights, class embeddings, optimiser,
gradient-scaler and RNG states, the step (which fixes the learning-rate schedule), and two SHA-256 digests:

- `checkpoint_sha256`: of every entry written with it (`whole_checkpoint_digest`; the entries are listed in
  `sealed_keys`, which the digest covers too), checked before a run resumes from it and before its model is used.
  Entries added to the file afterwards are outside it, and otseg never reads them;
- `sha256`: of the weights and class embeddings only (what checkpoints carried before the whole one existed).

A checkpoint without `checkpoint_sha256` is refused for resuming unless the user trusts it (`--trust-unverified`):
its optimiser and RNG state would be used unchecked. One without any digest is refused for every use unless
trusted. The digests detect damage (a flipped byte, a truncated copy), not a deliberate edit: whoever edits the
file can write new digests too.

Its one home: built, written and read here, by the trainer and by `load_model` alike.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from otseg.config import ModelConfig, apply_overrides
from otseg.errors import BadValueError
from otseg.formats.state_dict import check_state_dict_fits, tensor_digest, verify_digest
from otseg.formats.torch_pickle import safe_torch_load
from otseg.model.segmentor import OTSeg
from otseg.utils import atomic_torch_save

__all__ = [
    "CHECKPOINT_DIGEST_KEY",
    "SEALED_KEYS",
    "TRAINING_FORMAT",
    "UnreadableCheckpointError",
    "UnverifiedCheckpointError",
    "checkpoint_digest",
    "is_training_checkpoint",
    "model_from_training_checkpoint",
    "read_training_checkpoint",
    "seal_training_checkpoint",
    "training_checkpoint",
    "verify_training_checkpoint",
    "verify_training_digest",
    "whole_checkpoint_digest",
    "write_training_checkpoint",
]

TRAINING_FORMAT = "otseg-train"
CHECKPOINT_DIGEST_KEY = "checkpoint_sha256"
SEALED_KEYS = "sealed_keys"
_DIGEST_KEYS = frozenset({CHECKPOINT_DIGEST_KEY, "sha256"})
_STATES = ("optimizer", "scaler", "rng", "train_config", "model_config")  # besides the weights, in the file's order


class UnreadableCheckpointError(BadValueError):
    """The checkpoint file itself cannot be read (truncated, corrupt, holds pickled objects)."""


class UnverifiedCheckpointError(BadValueError):
    """A checkpoint that carries no digest of what it would be used for, refused because the user did not say to
    trust it (not a damaged file: an older or foreign one)."""


def training_checkpoint(
    *, step: int, model_state: dict[str, Tensor], class_embeddings: Tensor, class_names: list[str], **states: Any
) -> dict[str, Any]:
    """An `iter_N.pt`'s contents: `model_state` without the frozen text tower, `class_embeddings` (K, P, C),
    `states` (optimizer, scaler, rng as plain values for weights_only loading, train_config, model_config) and their
    SHA-256 digests (`seal_training_checkpoint`, checked on loading)."""
    if set(states) != set(_STATES):
        raise TypeError(f"training_checkpoint takes the states {_STATES}, got {sorted(states)}")
    head = {"format": TRAINING_FORMAT, "step": step, "model": model_state, "class_embeddings": class_embeddings}
    return seal_training_checkpoint({**head, **{k: states[k] for k in _STATES}, "class_names": class_names})


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
        raise BadValueError(f"{path} is not an otseg training checkpoint (an iter_N.pt written by otseg train)")
    _check_entries(ckpt, path, required)
    return ckpt


def _check_entries(ckpt: dict[str, Any], path: str | os.PathLike, required: tuple[str, ...]) -> None:
    absent = [k for k in required if k not in ckpt]
    if absent:
        raise BadValueError(
            f"training checkpoint {path} lacks {absent}: it is damaged; use another iter_N.pt of the run"
        )


def whole_checkpoint_digest(ckpt: Mapping[str, Any]) -> str:
    """SHA-256 of the entries of a checkpoint listed in its `sealed_keys` (and of that list): weights, class
    embeddings, optimiser, scaler and RNG states, step, configs, class names. Containers, numbers, strings and tensors
    (dtype, shape and bytes) are encoded with their type and length, in a fixed key order, so equal digests mean
    equal contents.

    Raises:
        ValueError: `sealed_keys` is not a list of the checkpoint's entries, or an entry holds an object no
            checkpoint otseg writes holds.
    """
    keys = ckpt.get(SEALED_KEYS)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise BadValueError(f"its {SEALED_KEYS} entry is not a list of names")
    absent = [k for k in keys if k not in ckpt]
    if absent:
        raise BadValueError(f"it lacks {absent}, written with it")
    h = hashlib.sha256()
    stack: list[Any] = [{**{k: ckpt[k] for k in keys}, SEALED_KEYS: keys}]
    while stack:  # an explicit stack: deep nesting cannot exhaust Python's recursion limit
        value = stack.pop()
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"x{t.dtype}{tuple(t.shape)}:".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().data)
        elif isinstance(value, np.ndarray):
            h.update(f"a{value.dtype.str}{value.shape}:".encode() + np.ascontiguousarray(value).tobytes())
        elif isinstance(value, Mapping):
            keys = sorted(value, key=lambda k: (type(k).__name__, str(k)))
            h.update(f"d{len(keys)}:".encode())
            for k in reversed(keys):  # popped in order: key, then its value
                stack.append(value[k])
                stack.append(k)
        elif isinstance(value, (list, tuple)):
            h.update(f"{'l' if isinstance(value, list) else 't'}{len(value)}:".encode())
            stack.extend(reversed(value))
        elif isinstance(value, str):
            raw = value.encode("utf-8", "surrogatepass")
            h.update(f"s{len(raw)}:".encode() + raw)
        elif isinstance(value, bool) or value is None:
            h.update({True: b"T", False: b"F", None: b"N"}[value])
        elif isinstance(value, int):
            h.update(f"i{value};".encode())
        elif isinstance(value, float):
            h.update(b"f" + struct.pack("<d", value))
        else:
            raise BadValueError(f"holds a {type(value).__name__}, which no checkpoint otseg writes holds")
    return h.hexdigest()


def seal_training_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """`ckpt` with its digests added: `sha256` (weights and embeddings) and `checkpoint_sha256` (everything)."""
    if isinstance(ckpt.get("model"), Mapping) and isinstance(ckpt.get("class_embeddings"), Tensor):
        ckpt["sha256"] = checkpoint_digest(ckpt["model"], ckpt["class_embeddings"])
    ckpt[SEALED_KEYS] = sorted(k for k in ckpt if k not in _DIGEST_KEYS and k != SEALED_KEYS)
    ckpt[CHECKPOINT_DIGEST_KEY] = whole_checkpoint_digest(ckpt)
    return ckpt


def verify_training_checkpoint(
    ckpt: dict[str, Any], source: str, use: Literal["resume", "weights"], trust_unverified: bool = False
) -> None:
    """Check a checkpoint's digests before it is used: to `resume` a run (everything must be covered) or for its
    `weights` (a digest of the weights suffices: checkpoints written before the whole digest existed).

    Raises:
        ValueError: a digest does not match (the file is damaged).
        UnverifiedCheckpointError: no digest covers what `use` needs, and `trust_unverified` is False.
    """
    expected = ckpt.get(CHECKPOINT_DIGEST_KEY)
    if expected is not None:
        try:
            actual = whole_checkpoint_digest(ckpt)
        except ValueError as e:
            raise BadValueError(f"{source}: {e}; the file was edited or damaged after otseg train wrote it") from None
        if not isinstance(expected, str) or actual != expected:
            raise BadValueError(
                f"{source}: its tensors do not match the SHA-256 written with them (over the weights, optimiser, "
                "scaler and RNG state): the file is corrupt (changed on disk or in transfer); use another checkpoint "
                "of the run"
            )
        verify_training_digest(ckpt, source)  # the weights' own digest, where present, must agree too
        return
    if trust_unverified:  # the user's word for what no digest covers; a digest that is there must still match
        verify_training_digest(ckpt, source)
        return
    if use == "weights" and ckpt.get("sha256") is not None:
        verify_training_digest(ckpt, source)
        return
    covered = "covers its weights only, not the optimiser, scaler and RNG state a resumed run uses"
    what = covered if ckpt.get("sha256") is not None else "is missing"
    alternative = "; or start a new run from its weights with --init-from" if ckpt.get("sha256") is not None else ""
    raise UnverifiedCheckpointError(
        f"{source} carries no SHA-256 of everything it holds (its digest {what}): it was written by an older otseg "
        f"or another tool; pass --trust-unverified (trust_unverified=True) if you trust where it came from"
        f"{alternative}"
    )


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
        raise BadValueError(f"{source}: its weights or class embeddings are missing; the file is damaged")
    tensors = {f"model.{k}": v for k, v in model_state.items() if isinstance(v, Tensor)}
    verify_digest({**tensors, "class_embeddings": emb}, expected, source)


def model_from_training_checkpoint(
    ckpt: dict[str, Any], p: Path, overrides: dict[str, Any] | None, trust_unverified: bool = False
) -> OTSeg:
    """Build the model of an `iter_N.pt` (its own config, `overrides` applied) and load weights + class embeddings;
    `trust_unverified` accepts a checkpoint without any digest."""
    _check_entries(ckpt, p, ("model_config", "model", "class_embeddings"))
    try:
        cfg = saved = ModelConfig.from_dict(ckpt["model_config"])
        if overrides:  # e.g. `otseg eval --set head.seen_bias=0`; were silently ignored for these checkpoints
            cfg = apply_overrides(cfg, overrides)
    except (TypeError, KeyError, ValueError) as e:
        raise BadValueError(f"{p}: its model_config cannot be used: {e}") from e
    with torch.device("meta"):  # shapes only: the weights are checked against the config before anything is built
        shapes_only = OTSeg(cfg)
    check_state_dict_fits(
        shapes_only,
        ckpt["model"],
        f"training checkpoint {p}",
        may_be_missing=("text_encoder.",),
        fix="--set overrides of the architecture (vision.*, head.* sizes) must match the training run's; drop them",
    )
    model = OTSeg(cfg)
    model.load_state_dict(ckpt["model"], strict=False)  # strict=False: the frozen text tower is never saved
    emb = ckpt["class_embeddings"]
    names = ckpt.get("class_names")
    expected = (cfg.num_prompts, cfg.head.embed_dim)
    if not isinstance(emb, torch.Tensor) or not emb.is_floating_point():
        raise BadValueError(
            f"training checkpoint {p}: class_embeddings must be a floating-point tensor, got "
            f"{emb.dtype if isinstance(emb, torch.Tensor) else type(emb).__name__}; the file is damaged or was "
            "edited: use another checkpoint of the run"
        )
    shape = tuple(emb.shape)
    if len(shape) != 3 or shape[1:] != expected or (names is not None and len(names) != shape[0]):
        raise BadValueError(
            f"training checkpoint {p}: class_embeddings {shape} do not fit its model (expected (K, {expected[0]}, "
            f"{expected[1]}) with K = {len(names) if names is not None else 'the number of classes'}); the file is "
            "damaged or was edited: use another checkpoint of the run"
        )
    # Last, after the checks that name what does not fit: the bytes must be the ones written.
    verify_training_checkpoint(ckpt, f"training checkpoint {p}", "weights", trust_unverified)
    overridden = list(cfg.class_names) != list(saved.class_names)
    if overridden and (names is None or list(cfg.class_names) != list(names)):
        # The classes were overridden (e.g. `otseg eval --dataset custom` brings its own): the stored embeddings
        # belong to the training classes, so leave the model without any; the caller must embed the new
        # names (otseg eval: --clip or --embeddings) instead of silently scoring the old classes.
        return model
    model.set_class_embeddings(emb, class_names=names)
    return model
