"""The reference's released checkpoints (mmcv `.pth` files): reading them and mapping their keys onto ours.

A reference checkpoint is `{'meta', 'state_dict', 'optimizer'}` whose `state_dict` holds `backbone.*`,
`text_encoder.*` and `decode_head.*` keys. Every reference key is either mapped to one of ours by an explicit rule
below, or dropped by name with a reason; anything else is an error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from otseg.clip.model import resize_positional_embedding
from otseg.errors import BadValueError, UnknownNameError
from otseg.formats.state_dict import check_state_dict_fits
from otseg.formats.torch_pickle import safe_torch_load
from otseg.model.segmentor import OTSeg

__all__ = [
    "ConversionReport",
    "convert_reference_state_dict",
    "load_reference_checkpoint",
    "map_reference_key",
    "read_reference_state_dict",
]

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
    raise UnknownNameError(f"no mapping rule for reference key {key!r}")


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
        raise BadValueError(f"{p} is not an mmseg checkpoint: expected a dict with a 'state_dict' entry")
    if not isinstance(state_dict, dict):
        raise BadValueError(f"{p}: 'state_dict' is a {type(state_dict).__name__}, not a dict of tensors")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise BadValueError(f"{p}: 'state_dict' entries that are not tensors: {bad[:8]}")
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
                raise BadValueError(
                    f"{source}: cannot resize {key} {tuple(value.shape)} to {tuple(expected)}: {e}"
                ) from e
        out[new_key] = value
        report.mapped[key] = new_key

    def file_name(our_key: str) -> str:
        """A model key as the checkpoint names it (what a user can look up), with ours alongside if different."""
        ref_key = _reference_key(our_key)
        return ref_key if ref_key == our_key else f"{ref_key} (-> {our_key})"

    check_state_dict_fits(
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
