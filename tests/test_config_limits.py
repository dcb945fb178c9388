"""Every size of a model config is bounded, and the memory a config implies is estimated and refused above a limit
before anything is built (`otseg.validation`, `otseg.config`, `otseg.clip.config`)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from otseg.clip.text import TextEncoder
from otseg.config import MAX_CLASSES, MAX_MODEL_BYTES, HeadConfig, ModelConfig, TextConfig, VisionConfig
from otseg.model.presets import get_preset
from otseg.model.segmentor import OTSeg
from otseg.validation import Validated

SECTIONS: dict[type[Validated], str] = {
    VisionConfig: "vision.", TextConfig: "text.", HeadConfig: "head.", ModelConfig: ""
}  # fmt: skip


@pytest.mark.parametrize(
    ("cls", "name", "limit"), [(cls, name, limit) for cls in SECTIONS for name, limit in cls._at_most.items()]
)
def test_every_bounded_size_is_refused_one_above_its_limit(cls: type[Validated], name: str, limit: int) -> None:
    base = cls()
    with pytest.raises(ValueError) as info:
        dataclasses.replace(base, **{name: limit + 1})  # type: ignore[type-var]
    msg = str(info.value)
    assert f"config key {SECTIONS[cls]}{name} = {limit + 1}" in msg and f"at most {limit:,}" in msg
    assert "\n" not in msg


def test_a_huge_layer_count_from_a_config_dict_is_refused_by_name() -> None:
    d = get_preset("voc12-inductive").to_dict()
    d["vision"]["layers"] = 1_000_000
    with pytest.raises(ValueError, match=r"vision\.layers = 1000000: expected at most 128"):
        ModelConfig.from_dict(d)


@pytest.mark.parametrize("preset", ["voc12-inductive", "coco-inductive"])
def test_parameter_counts_from_the_config_equal_the_built_model(preset: str) -> None:
    cfg = get_preset(preset)
    with torch.device("meta"):  # shapes only: nothing is allocated
        model, text = OTSeg(cfg), TextEncoder(cfg.text)
    state = model.state_dict()
    assert sum(v.numel() for k, v in state.items() if k.startswith("backbone.")) == cfg.vision.parameter_count()
    assert sum(v.numel() for k, v in state.items() if k.startswith("head.")) == cfg.head.parameter_count()
    assert sum(v.numel() for v in text.state_dict().values()) == cfg.text.parameter_count()
    assert sum(cfg.estimated_bytes().values()) < 2**30  # OTSeg on ViT-B/16: about 0.65 GiB


def test_a_model_within_every_size_bound_but_too_large_in_total_is_refused() -> None:
    cfg = get_preset("voc12-inductive")
    vision = dataclasses.replace(cfg.vision, width=8192, heads=64, layers=32)  # every field within its bound
    with pytest.raises(ValueError, match=r"needing about \d+\.\d GiB .* over otseg's limit of 6 GiB") as info:
        dataclasses.replace(cfg, vision=vision)
    assert "\n" not in str(info.value)
    assert 4 * vision.parameter_count() > MAX_MODEL_BYTES


def test_class_lists_are_bounded() -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_CLASSES:,} classes"):
        ModelConfig(class_names=tuple(f"c{i}" for i in range(MAX_CLASSES + 1)))
