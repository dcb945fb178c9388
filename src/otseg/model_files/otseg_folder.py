"""otseg's own model format: a folder with `model.safetensors` (weights, class embeddings, seen mask, and the
SHA-256 of them all in its header) and `config.json` (the model config, class names, format version).

Written by `save_pretrained` (and `otseg convert`, `otseg demo`), read by `load_pretrained`; safetensors holds
tensors only, so reading it runs no code.

What reading checks, in order, before anything is built or any tensor is read: config.json's size and nesting; the
config's sizes (bounded, with the memory they imply: `otseg.config`); that model.safetensors carries otseg's
SHA-256 (refused without one unless the caller trusts the file: `trust_unverified`); the names and shapes in
model.safetensors' header against the model the config describes (built on the meta device: shapes only); that
the config and class names are the ones the weights were saved with (`otseg_config_sha256`; folders saved before it
existed carry none and are read without this check). Then the tensors are read and their SHA-256 compared.

What the SHA-256 proves: that the bytes are the ones `save_pretrained` wrote (a flipped byte, a truncated copy, a
config.json from another save are refused). It is not a signature: someone who edits the file on purpose can write
a new SHA-256 beside the new tensors, and no reader can tell. To know a folder is the one its publisher released,
compare the SHA-256 of its files with the one the publisher gives (`sha256sum model.safetensors`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from otseg.clip.text import TextEncoder
from otseg.config import MAX_CLASSES, MAX_TEMPLATES, ModelConfig, apply_overrides
from otseg.data.classes import validate_class_names
from otseg.errors import BadValueError, MissingFileError
from otseg.formats.state_dict import check_state_dict_fits, tensor_digest, verify_digest
from otseg.formats.torch_pickle import first_sentence
from otseg.model.segmentor import OTSeg
from otseg.utils import atomic_write, atomic_write_text

__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "WEIGHTS_FILE", "load_pretrained", "save_pretrained", "saved_class_names"]

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_RESERVED_META = frozenset({"format", "format_version", "config", "class_names", "has_text_encoder"})
MAX_CONFIG_BYTES = 16 * 2**20  # a config.json holds a config and class names: kilobytes


def config_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of what config.json says about the model (its config, class names and text tower), canonically
    encoded: written into model.safetensors' header, so that a config.json edited or swapped is noticed."""
    bound = {k: meta.get(k) for k in ("config", "class_names", "has_text_encoder")}
    return hashlib.sha256(json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_pretrained(model: OTSeg, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` (weights + class embeddings) and `config.json` into `directory`, atomically."""
    d = Path(directory)
    clash = sorted(set(extra or {}) & _RESERVED_META)
    if clash:
        raise BadValueError(f"extra config.json entries {clash} would overwrite what load_pretrained reads")
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
    # The SHA-256 of the tensors and of the config travel in the safetensors header; load_pretrained verifies them.
    header = {"format": "pt", "otseg_sha256": tensor_digest(tensors), "otseg_config_sha256": config_digest(meta)}
    atomic_write(d / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    atomic_write_text(d / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
    return d


def load_pretrained(
    directory: str | os.PathLike,
    device: str | torch.device = "cpu",
    overrides: dict[str, Any] | None = None,
    trust_unverified: bool = False,
) -> OTSeg:
    """Load a model saved by `save_pretrained` (or written by `otseg convert`).

    `overrides` change inference settings of the saved config (e.g. {"stride": 256, "head.seen_bias": 0.0}).
    `trust_unverified`: accept a model.safetensors that carries no SHA-256 (written by another tool, or with its
    digest removed); otherwise such a file is refused. See the module docstring for what is checked.
    """
    d = Path(directory)
    cfg_path, weights_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise MissingFileError(
                f"{p} does not exist; expected a folder written by `otseg convert` or save_pretrained"
            )
    meta = _read_config_json(cfg_path)
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BadValueError(
            f"{cfg_path} has format_version {version!r}; this otseg reads up to {FORMAT_VERSION} (upgrade otseg)"
        )
    if not isinstance(meta.get("config"), dict):
        raise BadValueError(f'{cfg_path} has no "config" object')
    try:
        config = ModelConfig.from_dict(meta["config"])
        if overrides:
            config = apply_overrides(config, overrides)
    except (TypeError, ValueError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise BadValueError(f"{cfg_path}: {message}") from e
    names = _checked_names(meta.get("class_names"), cfg_path, "class_names")
    header, shapes = _read_header(weights_path)
    digest = header.get("otseg_sha256")
    if digest is None and not trust_unverified:
        raise BadValueError(
            f"{weights_path} carries no SHA-256 of its tensors (every file otseg writes does): it was written by "
            "another tool or its digest was removed; re-save it with save_pretrained / otseg convert, or pass "
            "--trust-unverified (trust_unverified=True) if you trust where it came from"
        )
    has_text = bool(meta.get("has_text_encoder"))
    fix = "the two files come from different saves: copy both from the same save_pretrained / otseg convert run"
    _check_declared_shapes(config, has_text, shapes, f"{weights_path} (with its {CONFIG_FILE})", fix)
    bound = header.get("otseg_config_sha256")
    if bound is not None and bound != config_digest(meta):
        raise BadValueError(
            f"{cfg_path} is not the config {WEIGHTS_FILE} was saved with (its config, class names or text tower "
            "entry were edited, or it comes from another save): copy both files from the same save_pretrained / "
            "otseg convert run; change inference settings with overrides (--set) instead of editing it"
        )
    model = OTSeg(config)
    if has_text:
        model.attach_text_encoder(TextEncoder(config.text))
    try:
        tensors = load_file(str(weights_path))
    except Exception as e:  # safetensors' own error type for a truncated or foreign file
        raise BadValueError(
            f"cannot read {weights_path} ({type(e).__name__}: {first_sentence(str(e))}); the file is truncated "
            "or corrupt: copy it again or re-run save_pretrained / otseg convert"
        ) from e
    emb = tensors.pop("class_embeddings", None)
    seen = tensors.pop("seen_mask", None)
    check_state_dict_fits(model, tensors, f"{weights_path} (with its {CONFIG_FILE})", fix=fix)
    digest_of = {**tensors, **({"class_embeddings": emb} if emb is not None else {})}
    digest_of.update({"seen_mask": seen} if seen is not None else {})
    verify_digest(digest_of, digest, str(weights_path))
    model.load_state_dict(tensors, strict=True)
    if emb is not None:
        if names is not None and len(names) != emb.shape[0]:
            raise BadValueError(
                f"{cfg_path}: {len(names)} class_names for the {emb.shape[0]} class embeddings of {WEIGHTS_FILE}"
            )
        if seen is not None and tuple(seen.shape) != (emb.shape[0],):
            raise BadValueError(
                f"{weights_path}: seen_mask has shape {tuple(seen.shape)} but there are {emb.shape[0]} classes; the "
                "file was edited or damaged: re-run save_pretrained / otseg convert"
            )
        seen_idx = torch.nonzero(seen.bool()).flatten().tolist() if seen is not None else None
        try:
            model.set_class_embeddings(emb, class_names=names, seen=seen_idx)
        except ValueError as e:
            raise BadValueError(
                f"{weights_path}: class_embeddings {tuple(emb.shape)} do not fit its config: {e}"
            ) from e
    return model.to(device)


def _checked_names(names: Any, cfg_path: Path, key: str) -> list[str] | None:
    """`names` from config.json checked to be a list of valid class names (None stays None); else one line."""
    if names is None:
        return None
    if not isinstance(names, list):
        raise BadValueError(f"{cfg_path}: {key} = {str(names)[:60]}: expected a list of names")
    try:
        return validate_class_names(names, f"{cfg_path}: {key}")
    except TypeError as e:
        raise BadValueError(str(e)) from None


def saved_class_names(directory: str | os.PathLike) -> list[str]:
    """The class names a model folder's config.json lists (`class_names`, else `config.class_names`), read with
    the same bounds and checks as `load_pretrained`, without building the model or reading its weights."""
    cfg_path = Path(directory) / CONFIG_FILE
    meta = _read_config_json(cfg_path)
    names = _checked_names(meta.get("class_names"), cfg_path, "class_names")
    if names is None:
        config = meta.get("config")
        inner = config.get("class_names") if isinstance(config, dict) else None
        names = _checked_names(inner, cfg_path, "config.class_names") or []
    return names


def _read_config_json(path: Path) -> dict[str, Any]:
    """config.json as a dict, bounded in size and nesting; one ValueError naming the file otherwise."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise BadValueError(
            f"{path} has {size:,} bytes, more than any otseg config.json (at most {MAX_CONFIG_BYTES:,})"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer over Python's 4,300 digits
        raise BadValueError(f"{path} is not valid JSON: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise BadValueError(f"{path} is not an otseg config: its JSON is nested too deep") from None
    if not isinstance(meta, dict) or meta.get("format") != "otseg":
        raise BadValueError(f'{path} is not an otseg config (no "format": "otseg")')
    return meta


def _read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """(metadata, {name: shape}) from a safetensors header, reading no tensor data."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors' own error type for a truncated or foreign file
        raise BadValueError(
            f"cannot read {path} ({type(e).__name__}: {first_sentence(str(e))}); the file is truncated or corrupt: "
            "copy it again or re-run save_pretrained / otseg convert"
        ) from e


def _check_declared_shapes(
    config: ModelConfig, has_text: bool, shapes: dict[str, tuple[int, ...]], source: str, fix: str
) -> None:
    """The names and shapes a safetensors header declares against the model `config` describes, built on the meta
    device (shapes only, nothing allocated), before the real model is built or any tensor read."""
    with torch.device("meta"):
        expected = OTSeg(config)
        if has_text:
            expected.attach_text_encoder(TextEncoder(config.text))
    extras = ("class_embeddings", "seen_mask")
    declared = {k: torch.empty(v, device="meta") for k, v in shapes.items() if k not in extras}
    check_state_dict_fits(expected, declared, source, fix=fix)
    emb = shapes.get("class_embeddings")
    width = config.head.embed_dim
    if emb is not None and (len(emb) != 3 or emb[2] != width or emb[0] > MAX_CLASSES or emb[1] > MAX_TEMPLATES):
        raise BadValueError(
            f"{source}: class_embeddings declare shape {emb}; the config expects (K, N, {width}) with K at most "
            f"{MAX_CLASSES} and N at most {MAX_TEMPLATES}; {fix}"
        )
    seen = shapes.get("seen_mask")
    if seen is not None and emb is not None and seen != emb[:1]:
        raise BadValueError(f"{source}: seen_mask has shape {seen} but there are {emb[0]} classes; {fix}")
