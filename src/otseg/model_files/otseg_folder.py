"""otseg's own model format: a folder with `model.safetensors` (weights, class embeddings, seen mask, and the
SHA-256 of them all in its header) and `config.json` (the model config, class names, format version).

Written by `save_pretrained` (and `otseg convert`, `otseg demo`), read by `load_pretrained`; safetensors holds
tensors only, so reading it runs no code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from otseg.clip.text import TextEncoder
from otseg.config import ModelConfig, apply_overrides
from otseg.data.classes import validate_class_names
from otseg.formats.state_dict import check_state_dict_fits, tensor_digest, verify_digest
from otseg.formats.torch_pickle import first_sentence
from otseg.model.segmentor import OTSeg
from otseg.utils import atomic_write, atomic_write_text

__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "WEIGHTS_FILE", "load_pretrained", "save_pretrained"]

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_RESERVED_META = frozenset({"format", "format_version", "config", "class_names", "has_text_encoder"})


def save_pretrained(model: OTSeg, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` (weights + class embeddings) and `config.json` into `directory`, atomically."""
    d = Path(directory)
    clash = sorted(set(extra or {}) & _RESERVED_META)
    if clash:
        raise ValueError(f"extra config.json entries {clash} would overwrite what load_pretrained reads")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if getattr(model, "has_class_embeddings", False):
        tensors["class_embeddings"] = model.class_embeddings.detach().cpu().contiguous()
        tensors["seen_mask"] = model.seen_mask.detach().cpu().to(torch.uint8)
    meta = {
        "format": "otseg",
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "class_names": list(getattr(model, "class_names", model.config.class_names)),
        "has_text_encoder": getattr(model, "text_encoder", None) is not None,
        **(extra or {}),
    }
    # The SHA-256 of the tensors travels in the safetensors header; load_pretrained verifies it.
    header = {"format": "pt", "otseg_sha256": tensor_digest(tensors)}
    atomic_write(d / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    atomic_write_text(d / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
    return d


def load_pretrained(
    directory: str | os.PathLike, device: str | torch.device = "cpu", overrides: dict[str, Any] | None = None
) -> OTSeg:
    """Load a model saved by `save_pretrained` (or written by `otseg convert`).

    `overrides` change inference settings of the saved config (e.g. {"stride": 256, "head.seen_bias": 0.0}).
    """
    d = Path(directory)
    cfg_path, weights_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} does not exist; expected a folder written by `otseg convert` or save_pretrained"
            )
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != "otseg":
        raise ValueError(f'{cfg_path} is not an otseg config (no "format": "otseg")')
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{cfg_path} has format_version {version!r}; this otseg reads up to {FORMAT_VERSION} (upgrade otseg)"
        )
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f'{cfg_path} has no "config" object')
    try:
        config = ModelConfig.from_dict(meta["config"])
        if overrides:
            config = apply_overrides(config, overrides)
    except (TypeError, ValueError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"{cfg_path}: {message}") from e
    model = OTSeg(config)
    try:
        tensors = load_file(str(weights_path))
        with safe_open(str(weights_path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors' own error type for a truncated or foreign file
        raise ValueError(
            f"cannot read {weights_path} ({type(e).__name__}: {first_sentence(str(e))}); the file is truncated "
            "or corrupt: copy it again or re-run save_pretrained / otseg convert"
        ) from e
    names = meta.get("class_names")
    if names is not None:
        if not isinstance(names, list):
            raise ValueError(f"{cfg_path}: class_names = {str(names)[:60]}: expected a list of names")
        try:
            names = validate_class_names(names, f"{cfg_path}: class_names")
        except TypeError as e:
            raise ValueError(str(e)) from None
    if meta.get("has_text_encoder"):
        model.attach_text_encoder(TextEncoder(config.text))
    emb = tensors.pop("class_embeddings", None)
    seen = tensors.pop("seen_mask", None)
    check_state_dict_fits(
        model,
        tensors,
        f"{weights_path} (with its {CONFIG_FILE})",
        fix="the two files come from different saves: copy both from the same save_pretrained / otseg convert run",
    )
    digest_of = {**tensors, **({"class_embeddings": emb} if emb is not None else {})}
    digest_of.update({"seen_mask": seen} if seen is not None else {})
    verify_digest(digest_of, header.get("otseg_sha256"), str(weights_path))
    model.load_state_dict(tensors, strict=True)
    if emb is not None:
        if names is not None and len(names) != emb.shape[0]:
            raise ValueError(
                f"{cfg_path}: {len(names)} class_names for the {emb.shape[0]} class embeddings of {WEIGHTS_FILE}"
            )
        if seen is not None and tuple(seen.shape) != (emb.shape[0],):
            raise ValueError(
                f"{weights_path}: seen_mask has shape {tuple(seen.shape)} but there are {emb.shape[0]} classes; the "
                "file was edited or damaged: re-run save_pretrained / otseg convert"
            )
        seen_idx = torch.nonzero(seen.bool()).flatten().tolist() if seen is not None else None
        try:
            model.set_class_embeddings(emb, class_names=names, seen=seen_idx)
        except ValueError as e:
            raise ValueError(f"{weights_path}: class_embeddings {tuple(emb.shape)} do not fit its config: {e}") from e
    return model.to(device)
