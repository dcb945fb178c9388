"""Typed configuration of OTSeg: the model, its decode head, the data pipelines and training.

This is the configuration layer: it imports nothing from otseg but the validation base (`otseg.validation`) and
the CLIP towers' configs (`otseg.clip.config`), so every other module may import it. Every knob the reference
exposes through its mmseg config files (and the ablation switches researchers use) lives in one of these
dataclasses; presets (`otseg.model.presets`) are plain instances of them, and the facts of each dataset
(`otseg.data.facts`) fill them in.

Every field is checked when a config is built (`__post_init__`), whether from code, a preset, `--set`
overrides or a saved `config.json`: its type, `Literal` choices, positive sizes and strides, and lengths that
must agree. A bad value raises one `ValueError` naming the key (dotted, e.g. `head.map_combination`), the value
and what is valid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from otseg.clip.config import TextConfig, VisionConfig
from otseg.errors import BadValueError, UnknownNameError
from otseg.validation import Validated, coerce_text, field_hint, strict_build

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_CLASSES",
    "MAX_CLASS_NAME_CHARS",
    "MAX_MODEL_BYTES",
    "MAX_TEMPLATES",
    "PRECISIONS",
    "TEMPLATES_1",
    "TEMPLATES_6",
    "TEMPLATES_8",
    "TEMPLATE_SETS",
    "DataConfig",
    "HeadConfig",
    "LossFormulation",
    "ModelConfig",
    "Precision",
    "TextConfig",
    "TrainConfig",
    "VisionConfig",
    "apply_overrides",
    "resolve_templates",
]

Setting = Literal["inductive", "transductive", "fully"]
AttentionKind = Literal["mpsa", "softmax"]
MapCombination = Literal["gated", "last"]
# Inference precision (otseg.model.precision): float32 (the reference's) or bfloat16 autocast on the image tower.
Precision = Literal["float32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("float32", "bf16")
LayerInit = Literal["copies", "independent"]
# How the training losses are computed: "dense" = the reference's (logits upsampled to (B, K, H, W), dense one-hot
# targets), "lean" = the same values a chunk of classes at a time from the patch-grid logits (otseg.train.lean_losses).
LossFormulation = Literal["lean", "dense"]

# Normalisation statistics on the 0..255 scale. The reference trains and evaluates with ImageNet's.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
CLIP_MEAN = (122.770938, 116.7460125, 104.09373615)
CLIP_STD = (68.5005327, 66.6321579, 70.32316305)

# The reference's prompt template sets (OTSeg `templates_6` / `templates_8`), in the reference's order:
# the order matters because prompt n of a class is row n of its (N, D) embedding block.
TEMPLATES_6: tuple[str, ...] = (
    "a photo of a {}.",
    "a portrait of a {}.",
    "a part of a {}.",
    "a segment of a {}.",
    "a photo of small {}.",
    "a photo of medium {}.",
)
TEMPLATES_8: tuple[str, ...] = (*TEMPLATES_6, "a photo of large {}.", "a background of a {}.")
TEMPLATES_1: tuple[str, ...] = ("a photo of a {}.",)  # ZegCLIP's single prompt

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "templates_1": TEMPLATES_1,
    "templates_6": TEMPLATES_6,
    "templates_8": TEMPLATES_8,
}


def resolve_templates(templates: Sequence[str] | str | None) -> tuple[str, ...]:
    """Templates from a set name or an explicit list (None: the reference's `templates_6`). Each must contain
    one "{}"."""
    if templates is None:
        templates = "templates_6"
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise UnknownNameError(f"unknown template set {templates!r}; known: {sorted(TEMPLATE_SETS)}")
        return TEMPLATE_SETS[templates]
    out = tuple(templates)
    if not out:
        raise BadValueError("no prompt templates given")
    for t in out:
        if not isinstance(t, str):
            raise TypeError(f"prompt templates must be strings, got {type(t).__name__} {t!r}")
        if t.count("{}") != 1:
            raise BadValueError(f"prompt template {t!r} must contain exactly one '{{}}' for the class name")
        try:  # other braces ("{0}", "{name}", a lone "{") would only fail later, inside str.format
            t.format("x")
        except (IndexError, KeyError, ValueError) as e:
            raise BadValueError(
                f"prompt template {t!r} is not a valid format string ({e}); use '{{{{' for a brace"
            ) from e
    return out


@dataclass
class HeadConfig(Validated):
    """The OTSeg decode head (the reference's `ATMSingleHeadSeg`) and its ablation switches."""

    _section: ClassVar[str] = "head."
    _positive: ClassVar[tuple[str, ...]] = (
        "embed_dim", "num_layers", "num_heads", "ffn_dim", "output_size", "sinkhorn_eps", "sinkhorn_max_iter",
    )  # fmt: skip
    _non_negative: ClassVar[tuple[str, ...]] = ("sinkhorn_thresh",)
    _fractions: ClassVar[tuple[str, ...]] = ("dropout", "attn_dropout")
    _at_most: ClassVar[dict[str, int]] = {
        "embed_dim": 8192, "num_layers": 128, "num_heads": 256, "ffn_dim": 65536, "output_size": 4096,
        "sinkhorn_max_iter": 100_000,
    }  # fmt: skip

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
    # How the decoder layers start: "copies" = every layer a copy of one freshly initialised layer (the reference:
    # nn.TransformerDecoder deep-copies its layer, and init_weights never runs), "independent" = each layer drawn
    # on its own (what otseg did before; the demo pins it so that its measured table stays what it measured).
    layer_init: LayerInit = "copies"

    def parameter_count(self) -> int:
        """The parameters of the head this config builds (`otseg.model.head.OTSegHead`): the query projection
        (2d -> d) and, per layer, the attention projections, the FFN and two layer norms."""
        d, f = self.embed_dim, self.ffn_dim
        layer = 4 * (d * d + d) + 2 * d * f + f + d + 4 * d
        return 2 * d * d + d + self.num_layers * layer

    def _check(self) -> None:
        if self.attention == "softmax" and self.embed_dim % self.num_heads:
            raise self._fail("num_heads", self.num_heads, f"a divisor of head.embed_dim ({self.embed_dim})")
        if not 0 <= self.ensemble_weight <= 1:
            raise self._fail("ensemble_weight", self.ensemble_weight, "a weight in [0, 1]")


MAX_CLASS_NAME_CHARS = 200  # longer names cannot be meant (CLIP's 77 tokens hold about 70 words)
MAX_CLASSES = 4096  # the largest class list of a config (ADE20K-full has 847 classes, PASCAL Context 459)
MAX_TEMPLATES = 256  # prompt templates per class (the reference uses 6 or 8)
# The largest model a config may describe: parameters in float32 plus one attention map of the image tower at its
# window size, estimated from the config alone (`ModelConfig.estimated_bytes`) and refused above this before
# anything is built. OTSeg on ViT-B/16 needs about 0.6 GiB, on ViT-L/14 about 1.8 GiB.
MAX_MODEL_BYTES = 6 * 2**30


@dataclass
class ModelConfig(Validated):
    """Everything needed to build an OTSeg segmentor and run its reference inference."""

    _positive: ClassVar[tuple[str, ...]] = ("crop_size", "stride", "test_short_side")
    _at_most: ClassVar[dict[str, int]] = {"crop_size": 4096, "stride": 4096, "test_short_side": 4096}

    name: str = "custom"
    setting: Setting = "inductive"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    dataset: str = "voc12"  # key into otseg.data.classes
    class_names: tuple[str, ...] = ()
    unseen_classes: tuple[int, ...] = ()  # indices into class_names; seen = the rest, ascending
    # A key into TEMPLATE_SETS, or the prompt templates themselves (each with one "{}").
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

    def estimated_bytes(self) -> dict[str, int]:
        """The memory this config implies, from the config alone (nothing is built): float32 parameters of the
        image tower, the text tower and the head, and one attention map (heads x N x N floats) of the image tower
        over one window of N tokens. A lower bound of what building and running the model needs."""
        v = self.vision
        return {
            "vision": 4 * v.parameter_count(),
            "text": 4 * self.text.parameter_count(),
            "head": 4 * self.head.parameter_count(),
            "attention": 4 * v.heads * v.num_tokens**2,
        }

    def _check(self) -> None:
        if len(self.class_names) > MAX_CLASSES:
            raise self._fail("class_names", f"<{len(self.class_names):,} names>", f"at most {MAX_CLASSES:,} classes")
        if not isinstance(self.templates, str) and len(self.templates) > MAX_TEMPLATES:
            raise self._fail("templates", f"<{len(self.templates):,} templates>", f"at most {MAX_TEMPLATES} templates")
        estimate = self.estimated_bytes()
        if sum(estimate.values()) > MAX_MODEL_BYTES:
            parts = ", ".join(f"{k} {b / 2**30:.1f}" for k, b in estimate.items())
            raise BadValueError(
                f"config describes a model needing about {sum(estimate.values()) / 2**30:.1f} GiB ({parts} GiB), "
                f"over otseg's limit of {MAX_MODEL_BYTES / 2**30:.0f} GiB: check vision.*, text.* and head.* sizes "
                "(a released CLIP ViT-B/16 model needs about 0.6 GiB)"
            )
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
            raise BadValueError(f"a model config must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        if isinstance(d.get("head"), dict) and "layer_init" not in d["head"]:
            # Saved before head.layer_init existed: that model's decoder layers were drawn independently (what a
            # fresh model built from this config must reproduce, e.g. the demo pack's "equal to init" tensors).
            d["head"] = {**d["head"], "layer_init": "independent"}
        sub = {"vision": VisionConfig, "text": TextConfig, "head": HeadConfig}
        for key, sub_cls in sub.items():
            if key in d:
                if not isinstance(d[key], dict):
                    raise BadValueError(f"config key {key} = {d[key]!r}: expected an object of {key}.* settings")
                d[key] = strict_build(sub_cls, d[key], key)
        return strict_build(cls, d, "model")


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
            raise BadValueError(
                f"unknown config key {dotted!r} (= {value!r}); keys are model keys or vision.*, text.*, head.* ones"
            )
        leaf = parts[-1]
        fields = {f.name for f in dataclasses.fields(target)} - {"vision", "text", "head"}
        if leaf not in fields:
            raise BadValueError(f"unknown config key {dotted!r} (= {value!r}); valid keys here: {sorted(fields)}")
        changes[leaf] = coerce_text(value, getattr(target, leaf), dotted, field_hint(type(target), leaf))
    built = {name: dataclasses.replace(getattr(cfg, name), **changes) for name, changes in sections.items()}
    return dataclasses.replace(cfg, **built, **top)


@dataclass
class DataConfig:
    """Settings of the training augmentation and the test resize of one dataset (`reference-spec.md` §4.5).

    Sizes are in pixels; `img_scale` is mmseg's `(long_max, short_max)` pair (the order inside the pair
    does not matter: the keep-ratio rescale uses its max as the long-side bound and its min as the short).
    `otseg.data.facts.data_config_for` derives it from a model config, so that the training crop, the test
    resize and the normalisation always agree with the model they feed.
    """

    dataset: str = "voc12"  # key into otseg.data.facts ("custom" for a user folder)
    img_scale: tuple[int, int] = (2048, 512)  # (520, 520) for PASCAL Context
    ratio_range: tuple[float, float] = (0.5, 2.0)  # r ~ U[lo, hi) scales img_scale before the keep-ratio fit
    crop_size: int = 512  # square training crop; 480 for PASCAL Context
    cat_max_ratio: float = 0.75  # a crop is re-drawn while one class covers >= this share of labelled pixels
    flip_prob: float = 0.5
    # PhotoMetricDistortion (each op fires with probability 0.5)
    brightness_delta: int = 32
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18  # on OpenCV's 0..179 hue scale
    mean: tuple[float, float, float] = IMAGENET_MEAN  # RGB, 0..255 scale
    std: tuple[float, float, float] = IMAGENET_STD
    ignore_index: int = 255
    reduce_zero_label: bool = True  # VOC / Context / ADE: id 0 (background) -> ignore, others shift by -1
    test_short_side: int = 512  # test-time keep-ratio resize target of the short side (no long-side cap)


@dataclass
class TrainConfig(Validated):
    """Optimisation and bookkeeping settings (defaults = the reference's effective recipe, spec section 4.3).

    Validated when built: a bad value raises one ValueError naming `train.KEY`, the value and what is valid.
    `otseg.data.facts.default_train_config` gives the reference's recipe for a model (its schedule length).
    """

    _section: ClassVar[str] = "train."
    _positive: ClassVar[tuple[str, ...]] = (
        "max_iters", "global_batch", "batch_size", "lr", "checkpoint_interval", "keep_checkpoints", "log_interval",
    )  # fmt: skip
    _non_negative: ClassVar[tuple[str, ...]] = (
        "grad_accum", "world_size", "backbone_lr_mult", "weight_decay", "min_lr", "power", "warmup_iters",
        "warmup_ratio", "eval_interval", "keep_every", "num_workers", "seed", "sinkhorn_stop_group",
    )  # fmt: skip

    max_iters: int = 20000
    # Images per optimizer step over all processes: part of the recipe (the reference: 4 GPUs x 4 images = 16).
    # The trainer splits it into world_size processes x batch_size images x grad_accum micro-batches.
    global_batch: int = 16
    batch_size: int = 4  # images per process and micro-batch (the reference: 4 per GPU)
    # Derived when training starts, and recorded so (config.json): 0 = derive, grad_accum = global_batch /
    # (batch_size * world_size) and world_size = the processes started. A non-zero value must agree.
    grad_accum: int = 0
    world_size: int = 0
    lr: float = 2e-4  # effective lr of every trainable parameter in the reference
    # lr of the backbone's trainable parameters (VPT prompts) relative to `lr` (the reference: 1, one lr for all)
    backbone_lr_mult: float = 1.0
    weight_decay: float = 0.01
    min_lr: float = 1e-6
    power: float = 0.9
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    amp: Literal["none", "bf16", "fp16"] = "none"  # Sinkhorn always runs in float32
    losses: LossFormulation = "lean"  # "dense": the reference's formulation (equal values, more memory and time)
    checkpoint_backbone: bool = False  # recompute the ViT blocks' activations in backward (less memory, more time)
    eval_interval: int = 0  # 0 = evaluate at the end only
    checkpoint_interval: int = 1000
    keep_checkpoints: int = 2  # older iter_*.pt files are deleted (the newest N are kept) ...
    keep_every: int = 10000  # ... except multiples of this (transductive runs start from the inductive iter_10000)
    log_interval: int = 20
    num_workers: int = 2
    seed: int = 0
    deterministic: bool = False
    tensorboard: bool = False
    init_from: str | None = None  # weights to start from (transductive: the inductive checkpoint)
    device: str | None = None  # None = cuda if available
    # An unreadable / corrupt sample, out-of-range label or size mismatch: "stop" training with a message
    # naming the file, or "skip" it (replaced by the next readable sample; counted and logged).
    bad_samples: Literal["stop", "skip"] = "stop"
    # With "skip", stop anyway once more than this share of the samples read for one micro-batch, or of the
    # distinct samples of the dataset, is bad: the data is broken, not a stray file.
    max_bad_fraction: float = 0.5
    # How the Sinkhorn transport plans are differentiated: "implicit" (implicit function theorem on the returned
    # plan; memory flat in the iteration count) or "unrolled" (autograd through every iteration, as the reference).
    sinkhorn_backward: Literal["implicit", "unrolled"] = "implicit"
    # Images per Sinkhorn stopping test: the reference stops all problems of one GPU's batch together (its 4
    # images); a larger micro-batch is split into groups of this many images. 0 = the whole micro-batch.
    sinkhorn_stop_group: int = 4

    def _check(self) -> None:
        if not 0.0 < self.max_bad_fraction <= 1.0:
            raise self._fail("max_bad_fraction", self.max_bad_fraction, "a fraction in (0, 1]")
