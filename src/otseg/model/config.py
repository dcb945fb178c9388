"""Typed configuration of an OTSeg model.

Every knob the reference exposes through its mmseg config files (and the ablation switches researchers
use) lives in one of these dataclasses. Presets (`otseg.model.presets`) are plain instances of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Setting = Literal["inductive", "transductive", "fully"]
AttentionKind = Literal["mpsa", "softmax"]
MapCombination = Literal["gated", "last"]

# Normalisation statistics on the 0..255 scale. The reference trains and evaluates with ImageNet's.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
CLIP_MEAN = (122.770938, 116.7460125, 104.09373615)
CLIP_STD = (68.5005327, 66.6321579, 70.32316305)


@dataclass
class VisionConfig:
    """CLIP ViT image tower with deep visual prompt tuning (the reference's `VPTCLIPVisionTransformer`)."""

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


@dataclass
class TextConfig:
    """CLIP text transformer (only needed to embed class names live)."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    output_dim: int = 512


@dataclass
class HeadConfig:
    """The OTSeg decode head (the reference's `ATMSingleHeadSeg`) and its ablation switches."""

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


@dataclass
class ModelConfig:
    """Everything needed to build an OTSeg segmentor and run its reference inference."""

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
        """Inverse of `to_dict`; unknown keys are an error so that typos in saved configs surface."""
        d = dict(d)
        sub = {"vision": VisionConfig, "text": TextConfig, "head": HeadConfig}
        for key, sub_cls in sub.items():
            if key in d and isinstance(d[key], dict):
                d[key] = _strict_build(sub_cls, d[key], key)
        for key in ("class_names", "unseen_classes", "mean", "std", "templates"):
            if key in d and isinstance(d[key], list):
                d[key] = tuple(d[key])
        return _strict_build(cls, d, "model")


def _strict_build(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {where} config key(s) {unknown}; valid keys: {sorted(names)}")
    return cls(**values)


def apply_overrides(cfg: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    """Return a copy of `cfg` with dotted-key overrides applied, e.g. {"head.use_mps": False}.

    Values given as strings (from the command line) are converted to the field's type.
    """
    cfg = dataclasses.replace(
        cfg,
        vision=dataclasses.replace(cfg.vision),
        text=dataclasses.replace(cfg.text),
        head=dataclasses.replace(cfg.head),
    )
    for dotted, value in overrides.items():
        target: Any = cfg
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not hasattr(target, part) or not dataclasses.is_dataclass(getattr(target, part)):
                raise KeyError(f"unknown config section {part!r} in override {dotted!r}")
            target = getattr(target, part)
        leaf = parts[-1]
        fields = {f.name: f for f in dataclasses.fields(target)}
        if leaf not in fields:
            raise KeyError(
                f"unknown config key {dotted!r}; valid keys here: {sorted(fields)} (sections: vision., text., head.)"
            )
        current = getattr(target, leaf)
        setattr(target, leaf, _coerce(value, current, dotted))
    return cfg


def _coerce(value: Any, current: Any, key: str) -> Any:
    if not isinstance(value, str) or isinstance(current, str):
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
        raise ValueError(f"cannot read {value!r} as a value for {key} (currently {current!r})") from None
    return value
