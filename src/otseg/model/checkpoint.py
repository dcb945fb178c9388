"""Checkpoints: the reference's released `.pth` files, and our own format (safetensors + JSON config).

Reference checkpoints are mmcv files `{'meta', 'state_dict', 'optimizer'}` whose `state_dict` holds
`backbone.*`, `text_encoder.*` and `decode_head.*` keys. Every reference key is either mapped to one of ours
by an explicit rule below, or dropped by name with a reason; anything else is an error.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from otseg.clip.model import resize_positional_embedding
from otseg.clip.text import TextEncoder
from otseg.config import ModelConfig
from otseg.data.classes import validate_class_names
from otseg.model.segmentor import OTSeg
from otseg.state_dict import check_state_dict_fits as fits
from otseg.state_dict import tensor_digest
from otseg.utils import atomic_write, atomic_write_text

__all__ = [
    "ConversionReport",
    "check_state_dict_fits",
    "checkpoint_digest",
    "load_pretrained",
    "load_reference_checkpoint",
    "map_reference_key",
    "read_reference_state_dict",
    "safe_torch_load",
    "save_pretrained",
    "verify_digest",
    "verify_training_digest",
]

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_RESERVED_META = frozenset({"format", "format_version", "config", "class_names", "has_text_encoder"})

# Reference decode-head names and ours, as templates whose {placeholders} match the patterns below; they are
# compiled in both directions (reference -> ours for loading, ours -> reference for error messages). The
# reference decoder layer subclasses nn.TransformerDecoderLayer, whose cross-attention slot `multihead_attn`
# holds the MPSA module and whose norm2 / norm3 follow the attention / FFN residuals.
_PLACEHOLDERS = {"layer": r"\d+", "param": r"weight|bias", "proj": r"q|k|v|proj", "linear": r"linear1|linear2"}
_HEAD_NAMES: list[tuple[str, str]] = [
    ("decode_head.q_proj.{param}", "head.q_proj.{param}"),
    ("decode_head.decoder_1.layers.{layer}.multihead_attn.{proj}.{param}", "head.layers.{layer}.attn.{proj}.{param}"),
    ("decode_head.decoder_1.layers.{layer}.{linear}.{param}", "head.layers.{layer}.{linear}.{param}"),
    ("decode_head.decoder_1.layers.{layer}.norm2.{param}", "head.layers.{layer}.norm_attn.{param}"),
    ("decode_head.decoder_1.layers.{layer}.norm3.{param}", "head.layers.{layer}.norm_ffn.{param}"),
]


def _compile_template(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ...
    body = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_PLACEHOLDERS[p]})" for i, p in enumerate(parts))
    return re.compile(f"^{body}$")


_HEAD_RULES = [(_compile_template(ref), ours) for ref, ours in _HEAD_NAMES]
_INVERSE_HEAD_RULES = [(_compile_template(ours), ref) for ref, ours in _HEAD_NAMES]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            return template.format(**m.groupdict())
    return None


# Reference keys dropped by name, with the reason shown to the user.
_DROP_RULES: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"^decode_head\.decoder_1\.layers\.\d+\.self_attn\."),
        "decoder self-attention: inherited from nn.TransformerDecoderLayer, never called by the reference forward",
    ),
    (
        re.compile(r"^decode_head\.decoder_1\.layers\.\d+\.norm1\."),
        "decoder norm1: follows the self-attention that the reference forward never calls",
    ),
    (
        re.compile(r"^decode_head\.loss_decode\.criterion\.empty_weight$"),
        "loss buffer (SegPlusCriterion.empty_weight): saved by the reference but unused by its losses",
    ),
    (re.compile(r"^decode_head\.conv_seg\."), "mmseg conv_seg: deleted by the reference head, never used"),
]

_TEXT_DROP_REASON = (
    "CLIP text tower: the reference never runs it (released configs load precomputed embeddings); "
    "kept only when the model has a text_encoder"
)


def map_reference_key(key: str, keep_text_encoder: bool = False) -> tuple[str | None, str]:
    """Map one reference state-dict key to ours.

    Returns:
        (our_key, "") when mapped, (None, reason) when dropped by name.

    Raises:
        KeyError: for a key no rule knows (the checkpoint is not an OTSeg/ZegCLIP-style model).
    """
    if key.startswith("module."):  # DDP-wrapped saves
        key = key[len("module.") :]
    if key.startswith("backbone."):
        return key, ""  # our VPT tower uses the reference / OpenAI CLIP names unchanged
    if key.startswith("text_encoder."):
        return (key, "") if keep_text_encoder else (None, _TEXT_DROP_REASON)
    for pattern, reason in _DROP_RULES:
        if pattern.search(key):
            return None, reason
    ours = _rename(key, _HEAD_RULES)
    if ours is not None:
        return ours, ""
    raise KeyError(f"no mapping rule for reference key {key!r}")


def _reference_key(our_key: str) -> str:
    """The reference name of one of our keys (for messages: it is what a user can find in the .pth file)."""
    if our_key.startswith(("backbone.", "text_encoder.")):
        return our_key
    return _rename(our_key, _INVERSE_HEAD_RULES) or our_key


@dataclass
class ConversionReport:
    """What happened to each reference key."""

    mapped: dict[str, str] = field(default_factory=dict)  # reference key -> our key
    dropped: dict[str, str] = field(default_factory=dict)  # reference key -> reason
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    dropped_numel: int = 0

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines = [
            f"mapped {len(self.mapped)} reference keys; dropped {len(self.dropped)} ({self.dropped_numel:,} values):"
        ]
        lines += [f"  - {n} x {reason}" for reason, n in reasons.items()]
        for key, (old, new) in self.resized.items():
            lines.append(f"  resized {key} {old} -> {new}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- safe reading
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def safe_torch_load(
    path: str | os.PathLike, what: str = "checkpoint", allow_pickle: bool = False, pickle_hint: str | None = None
) -> Any:
    """`torch.load(path, weights_only=not allow_pickle)` on the CPU, with one-line errors naming the file.

    Args:
        what: the kind of file, for messages ("checkpoint", "reference checkpoint", ...).
        allow_pickle: unpickle arbitrary objects (only for trusted files: unpickling can run code).
        pickle_hint: what to tell the user when safe loading refuses pickled objects; default: pass --allow-pickle.

    Raises:
        FileNotFoundError: `path` is not a file.
        ValueError: the file holds pickled objects that weights_only loading refuses, or it cannot be read
            (truncated, corrupt, not a torch file).
    """

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        text = str(e)
        if allow_pickle or "Weights only load failed" not in text:
            raise ValueError(f"cannot read {what} {p}: {_first_sentence(text)}; the file may be corrupt") from e
        found = _UNSAFE_GLOBAL.search(text)
        objects = f" (e.g. {found.group(1)})" if found else ""
        hint = pickle_hint or (
            "if the file comes from a source you trust, retry with --allow-pickle (allow_pickle=True in Python); "
            "unpickling can run arbitrary code"
        )
        raise ValueError(
            f"{what} {p} holds pickled Python objects{objects} that safe loading (torch.load with "
            f"weights_only=True) refuses: {hint}"
        ) from e
    except Exception as e:  # torch raises RuntimeError / EOFError / OSError / ... for truncated or foreign files
        raise ValueError(
            f"cannot read {what} {p} ({type(e).__name__}: {_first_sentence(str(e))}); the file is truncated, "
            "corrupt or not a PyTorch file (an interrupted copy or download?)"
        ) from e


def _first_sentence(text: str) -> str:
    """The first sentence of a (possibly long, multi-line) library message, on one line."""
    flat = " ".join(text.split())
    cut = flat.find(". ")
    return (flat[:cut] if 0 < cut < 300 else flat[:300]) or "no message"


_DEFAULT_FIX = (
    "is it a checkpoint of another preset or model size? build the model from the config it was saved with "
    "(otseg presets lists them; --set overrides must match the training run)"
)


def check_state_dict_fits(
    model: OTSeg,
    state: dict[str, Any],
    source: str,
    ignore_missing: tuple[str, ...] = ("text_encoder.",),
    fix: str = _DEFAULT_FIX,
) -> None:
    """Raise a one-line ValueError naming `source` if `state` does not fit `model` key for key and shape for shape
    (`otseg.state_dict.check_state_dict_fits`, the one check). Keys starting with one of `ignore_missing` may
    be absent (e.g. the frozen text tower is never saved)."""
    fits(model, state, source, may_be_missing=ignore_missing, fix=fix)


def read_reference_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> tuple[dict[str, Tensor], dict]:
    """Read a reference (mmcv) checkpoint: returns (state_dict, meta).

    Loaded with `weights_only=True` unless `allow_pickle` (only for files you trust: pickle runs code).
    """
    p = Path(path)
    ckpt = safe_torch_load(
        p,
        "reference checkpoint",
        allow_pickle,
        pickle_hint="if this is a genuine OTSeg release file from a source you trust, retry with allow_pickle=True "
        "(CLI: --allow-pickle); unpickling can run arbitrary code",
    )
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        state_dict, meta = ckpt["state_dict"], ckpt.get("meta") or {}
    elif isinstance(ckpt, dict) and ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        state_dict, meta = ckpt, {}
    else:
        raise ValueError(f"{p} is not an mmseg checkpoint: expected a dict with a 'state_dict' entry")
    if not isinstance(state_dict, dict):
        raise ValueError(f"{p}: 'state_dict' is a {type(state_dict).__name__}, not a dict of tensors")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{p}: 'state_dict' entries that are not tensors: {bad[:8]}")
    return state_dict, meta


def convert_reference_state_dict(
    ref_sd: dict[str, Tensor], model: OTSeg, source: str = "checkpoint"
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Map a reference state dict onto `model`'s keys (see `map_reference_key`), resizing positional tables.

    Raises:
        ValueError: unknown reference keys, shape mismatches, or model keys left without a value.
    """

    ours = model.state_dict()
    keep_text = any(k.startswith("text_encoder.") for k in ours)
    report = ConversionReport()
    out: dict[str, Tensor] = {}
    no_rule: list[str] = []
    not_in_model: list[str] = []
    for key, value in ref_sd.items():
        try:
            new_key, reason = map_reference_key(key, keep_text_encoder=keep_text)
        except KeyError:
            no_rule.append(key)
            continue
        if new_key is None:
            report.dropped[key] = reason
            report.dropped_numel += value.numel()
            continue
        if new_key not in ours:  # a known name the model lacks, e.g. a 4th decoder layer
            not_in_model.append(f"{key} (-> {new_key}: not in this model)")
            continue
        expected = ours[new_key].shape
        if new_key == "backbone.positional_embedding" and value.shape != expected:
            grid = model.config.vision.grid_size
            report.resized[key] = (tuple(value.shape), tuple(expected))
            try:
                value = resize_positional_embedding(value.float(), grid)
            except ValueError as e:
                raise ValueError(f"{source}: cannot resize {key} {tuple(value.shape)} to {tuple(expected)}: {e}") from e
        out[new_key] = value
        report.mapped[key] = new_key

    def file_name(our_key: str) -> str:
        """A model key as the checkpoint names it (what a user can look up), with ours alongside if different."""
        ref_key = _reference_key(our_key)
        return ref_key if ref_key == our_key else f"{ref_key} (-> {our_key})"

    fits(
        ours,
        out,
        source,
        key_name=file_name,
        unexpected=[f"{k} (no mapping rule)" for k in no_rule] + not_in_model,
        fix="is this checkpoint for a different preset (classes/prompt tokens/width)?",
    )
    return {k: v.to(ours[k].dtype) for k, v in out.items()}, report


def load_reference_checkpoint(
    model: OTSeg, path: str | os.PathLike, allow_pickle: bool = False, verbose: bool = False
) -> ConversionReport:
    """Load a reference release `.pth` (mmseg format) into an OTSeg model built from the matching preset.

    Never-used reference parameters are dropped by name (see `map_reference_key`); the report says which.
    """
    ref_sd, _meta = read_reference_state_dict(path, allow_pickle=allow_pickle)
    state, report = convert_reference_state_dict(ref_sd, model, source=str(path))
    model.load_state_dict(state, strict=True)
    if verbose:
        print(report.summary())
    return report


# ---------------------------------------------------------------------------------------------- our format
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
):
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
            from otseg.config import apply_overrides

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
            f"cannot read {weights_path} ({type(e).__name__}: {_first_sentence(str(e))}); the file is truncated "
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
        ignore_missing=(),
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


def verify_digest(tensors: dict[str, Tensor], expected: Any, source: str) -> None:
    """Refuse tensors whose SHA-256 differs from the one written beside them (files written before digests
    existed carry none and are accepted)."""
    if expected is None:
        return
    if not isinstance(expected, str) or tensor_digest(tensors) != expected:
        raise ValueError(
            f"{source}: its tensors do not match the SHA-256 written with them: the file is corrupt (changed on "
            "disk or in transfer); copy it again or use another checkpoint"
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
        raise ValueError(f"{source}: its weights or class embeddings are missing; the file is damaged")
    tensors = {f"model.{k}": v for k, v in model_state.items() if isinstance(v, Tensor)}
    verify_digest({**tensors, "class_embeddings": emb}, expected, source)
