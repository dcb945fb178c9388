"""Typed configuration of an OTSeg model.

Every knob the reference exposes through its mmseg config files (and the ablation switches researchers
use) lives in one of these dataclasses. Presets (`otseg.model.presets`) are plain instances of them.

Every field is checked when a config is built (`__post_init__`), whether from code, a preset, `--set`
overrides or a saved `config.json`: its type, `Literal` choices, positive sizes and strides, and lengths that
must agree. A bad value raises one `ValueError` naming the key (dotted, e.g. `head.map_combination`), the value
and what is valid.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Setting = Literal["inductive", "transductive", "fully"]
AttentionKind = Literal["mpsa", "softmax"]
MapCombination = Literal["gated", "last"]

# Normalisation statistics on the 0..255 scale. The reference trains and evaluates with ImageNet's.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
CLIP_MEAN = (122.770938, 116.7460125, 104.09373615)
CLIP_STD = (68.5005327, 66.6321579, 70.32316305)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = [repr(c) for c in typing.get_args(hint)]
        return " or ".join(choices) if len(choices) == 2 else "one of " + ", ".join(choices)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        inner = _type_name(args[0]) if args else "values"
        return f"a list of {inner}" + ("" if len(args) == 2 and args[1] is Ellipsis else f" ({len(args)} of them)")
    if hint is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` has the type `hint` (the subset of typing these configs use)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    return True


class Validated:
    """Base of the typed configs: checks every field against its annotation when the dataclass is built (and
    again on `dataclasses.replace`); subclasses name their positive / non-negative / fraction fields and add rules
    across fields in `_check`."""

    _section: ClassVar[str] = ""  # dotted prefix of this config's keys in overrides ("vision.", ...)
    _positive: ClassVar[tuple[str, ...]] = ()  # fields that must be > 0
    _non_negative: ClassVar[tuple[str, ...]] = ()  # fields that must be >= 0
    _fractions: ClassVar[tuple[str, ...]] = ()  # fields that must lie in [0, 1)

    def _fail(self, name: str, value: Any, expected: str) -> ValueError:
        return ValueError(f"config key {self._section}{name} = {value!r}: expected {expected}")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, list):  # JSON has no tuples
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            hint = hints[f.name]
            if not _matches(value, hint):
                raise self._fail(f.name, value, _type_name(hint))
        for name in self._positive:
            if getattr(self, name) <= 0:
                raise self._fail(name, getattr(self, name), "a positive number")
        for name in self._non_negative:
            if getattr(self, name) < 0:
                raise self._fail(name, getattr(self, name), "zero or more")
        for name in self._fractions:
            if not 0 <= getattr(self, name) < 1:
                raise self._fail(name, getattr(self, name), "a fraction in [0, 1)")
        self._check()

    def _check(self) -> None:
        """Rules across fields (overridden)."""


@dataclass
class VisionConfig(Validated):
    """CLIP ViT image tower with deep visual prompt tuning (the reference's `VPTCLIPVisionTransformer`)."""

    _section: ClassVar[str] = "vision."
    _positive: ClassVar[tuple[str, ...]] = ("image_size", "patch_size", "width", "layers", "heads", "output_dim")
    _non_negative: ClassVar[tuple[str, ...]] = ("num_prompt_tokens", "deep_prompt_layers")
    _fractions: ClassVar[tuple[str, ...]] = ("prompt_dropout",)

    image_size: int = 512  # input_resolution: the positional table is resampled to image_size/patch_size
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    output_dim: int = 512
    num_prompt_tokens: int = 10  # 100 for COCO-Stuff
    deep_prompt_layers: int = 11  # total_d_layer: blocks 1..deep_prompt_layers get fresh prompts
    prompt_dropout: float = 0.1  # hard-coded in the reference, active in training

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def _check(self) -> None:
        if self.width % self.heads:
            raise self._fail("heads", self.heads, f"a divisor of vision.width ({self.width})")
        if self.image_size < self.patch_size:
            raise self._fail("image_size", self.image_size, f"at least vision.patch_size ({self.patch_size})")


@dataclass
class TextConfig(Validated):
    """CLIP text transformer (only needed to embed class names live)."""

    _section: ClassVar[str] = "text."
    _positive: ClassVar[tuple[str, ...]] = ("context_length", "vocab_size", "width", "heads", "layers", "output_dim")

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    output_dim: int = 512

    def _check(self) -> None:
        if self.width % self.heads:
            raise self._fail("heads", self.heads, f"a divisor of text.width ({self.width})")


@dataclass
class HeadConfig(Validated):
    """The OTSeg decode head (the reference's `ATMSingleHeadSeg`) and its ablation switches."""

    _section: ClassVar[str] = "head."
    _positive: ClassVar[tuple[str, ...]] = (
        "embed_dim", "num_layers", "num_heads", "ffn_dim", "output_size", "sinkhorn_eps", "sinkhorn_max_iter",
    )  # fmt: skip
    _non_negative: ClassVar[tuple[str, ...]] = ("sinkhorn_thresh",)
    _fractions: ClassVar[tuple[str, ...]] = ("dropout", "attn_dropout")

    embed_dim: int = 512  # in_channels = embed_dims = channels in the reference
    num_layers: int = 3
    num_heads: int = 8  # used only by the softmax (ZegCLIP-style) attention; MPSA is single-head
    ffn_dim: int = 2048
    dropout: float = 0.1  # nn.TransformerDecoderLayer's dropout, dropout2, dropout3
    attn_dropout: float = 0.1  # dropout on the transport plan used as attention weights
    output_size: int = 512  # img_size: both score maps are upsampled to this square size
    sinkhorn_eps: float = 0.05
    sinkhorn_max_iter: int = 100
    sinkhorn_thresh: float = 1e-6
    use_mps: bool = True  # the parameter-free Multi-Prompt Sinkhorn score path
    attention: AttentionKind = "mpsa"  # "softmax" = ZegCLIP-style multi-head scaled-dot cross-attention
    # How the per-layer score maps A_1..A_L become the decoder logits: "gated" = A_L * prod_l sigmoid(A_l)^(1/(L-1))
    # (OTSeg), "last" = A_L alone (ZegCLIP).
    map_combination: MapCombination = "gated"
    ensemble_weight: float = 0.5  # test-time weight of the decoder path; 1 - this goes to the MPS path
    seen_bias: float = 0.1  # subtracted from seen-class channels after the sigmoid (inductive only)

    def _check(self) -> None:
        if self.attention == "softmax" and self.embed_dim % self.num_heads:
            raise self._fail("num_heads", self.num_heads, f"a divisor of head.embed_dim ({self.embed_dim})")
        if not 0 <= self.ensemble_weight <= 1:
            raise self._fail("ensemble_weight", self.ensemble_weight, "a weight in [0, 1]")


MAX_CLASS_NAME_CHARS = 200  # longer names cannot be meant (CLIP's 77 tokens hold about 70 words)


@dataclass
class ModelConfig(Validated):
    """Everything needed to build an OTSeg segmentor and run its reference inference."""

    _positive: ClassVar[tuple[str, ...]] = ("crop_size", "stride", "test_short_side")

    name: str = "custom"
    setting: Setting = "inductive"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    dataset: str = "voc12"  # key into otseg.data.classes
    class_names: tuple[str, ...] = ()
    unseen_classes: tuple[int, ...] = ()  # indices into class_names; seen = the rest, ascending
    # A key into otseg.model.text.TEMPLATE_SETS, or the prompt templates themselves (each with one "{}").
    templates: str | tuple[str, ...] = "templates_6"
    reference_embeddings: str | None = None  # file name of the reference's .npy (e.g. "voc12_otseg.npy")
    test_mode: Literal["slide", "whole"] = "slide"
    crop_size: int = 512
    stride: int = 426
    test_short_side: int = 512  # test-time resize (keep ratio) of the short side
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _check(self) -> None:
        for i, name in enumerate(self.class_names):
            if not name.strip():
                raise self._fail(f"class_names[{i}]", name, "a non-empty class name")
            if len(name) > MAX_CLASS_NAME_CHARS:
                raise self._fail(
                    f"class_names[{i}]", name[:40] + "...", f"a name of at most {MAX_CLASS_NAME_CHARS} characters"
                )
        k = self.num_classes
        bad = [i for i in self.unseen_classes if not 0 <= i < k]
        if bad:
            raise self._fail("unseen_classes", self.unseen_classes, f"class indices in 0..{k - 1} ({k} classes)")
        if len(set(self.unseen_classes)) != len(self.unseen_classes):
            raise self._fail("unseen_classes", self.unseen_classes, "each class index once")
        if k and len(self.unseen_classes) == k:
            raise self._fail(
                "unseen_classes", self.unseen_classes, f"at least one seen class (all {k} classes are unseen)"
            )
        if self.stride > self.crop_size:
            raise self._fail(
                "stride", self.stride, f"at most crop_size ({self.crop_size}): windows further apart leave gaps"
            )
        if any(v <= 0 for v in self.std):
            raise self._fail("std", self.std, "three positive numbers")
        if isinstance(self.templates, str):
            if not self.templates:
                raise self._fail("templates", self.templates, "a template-set name or a list of templates")
        elif not self.templates or any(t.count("{}") != 1 for t in self.templates):
            raise self._fail("templates", self.templates, 'templates with one "{}" each, e.g. "a photo of a {}."')

    @property
    def seen_classes(self) -> tuple[int, ...]:
        unseen = set(self.unseen_classes)
        return tuple(i for i in range(self.num_classes) if i not in unseen)

    @property
    def num_prompts(self) -> int:
        from otseg.model.text import resolve_templates

        return len(resolve_templates(self.templates))

    @property
    def apply_seen_bias(self) -> bool:
        """Whether inference subtracts `head.seen_bias` from seen channels (the reference: not after self-training)."""
        return self.setting != "transductive"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys and bad values are errors that name the key."""
        if not isinstance(d, dict):
            raise ValueError(f"a model config must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        sub = {"vision": VisionConfig, "text": TextConfig, "head": HeadConfig}
        for key, sub_cls in sub.items():
            if key in d:
                if not isinstance(d[key], dict):
                    raise ValueError(f"config key {key} = {d[key]!r}: expected an object of {key}.* settings")
                d[key] = _strict_build(sub_cls, d[key], key)
        return _strict_build(cls, d, "model")


def _strict_build(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {where} config key(s) {unknown}; valid keys: {sorted(names)}")
    return cls(**values)


def apply_overrides(cfg: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    """Return a copy of `cfg` with dotted-key overrides applied, e.g. {"head.use_mps": False}.

    Values given as strings (from the command line) are converted to the field's type. The result is
    validated as any config is: an unknown key or a bad value raises one `ValueError` naming the key, the value
    and what is valid.
    """
    sections: dict[str, dict[str, Any]] = {"vision": {}, "text": {}, "head": {}}
    top: dict[str, Any] = {}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if len(parts) == 1:
            target, changes = cfg, top
        elif len(parts) == 2 and parts[0] in sections:
            target, changes = getattr(cfg, parts[0]), sections[parts[0]]
        else:
            raise ValueError(
                f"unknown config key {dotted!r} (= {value!r}); keys are model keys or vision.*, text.*, head.* ones"
            )
        leaf = parts[-1]
        fields = {f.name for f in dataclasses.fields(target)} - {"vision", "text", "head"}
        if leaf not in fields:
            raise ValueError(f"unknown config key {dotted!r} (= {value!r}); valid keys here: {sorted(fields)}")
        changes[leaf] = _coerce(value, getattr(target, leaf), dotted, _field_hint(type(target), leaf))
    built = {name: dataclasses.replace(getattr(cfg, name), **changes) for name, changes in sections.items()}
    return dataclasses.replace(cfg, **built, **top)


def _field_hint(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, current: Any, key: str, hint: Any = None) -> Any:
    """A command-line string -> the type of `current` (or of `hint`); other values are returned unchanged."""
    if not isinstance(value, str) or isinstance(current, str):
        return value
    literal = hint is not None and typing.get_origin(hint) is Literal
    if literal:
        return value
    try:
        if isinstance(current, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, tuple):
            items = [v.strip() for v in value.split(",") if v.strip()]
            if current and isinstance(current[0], int):
                return tuple(int(v) for v in items)
            if current and isinstance(current[0], float):
                return tuple(float(v) for v in items)
            return tuple(items)
        if current is None:
            return None if value.lower() == "none" else value
    except ValueError:
        kind = "true or false" if isinstance(current, bool) else f"a {type(current).__name__}"
        raise ValueError(f"config key {key} = {value!r}: expected {kind} (currently {current!r})") from None
    return value
