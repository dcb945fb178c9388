"""Named presets reproduce the reference runs (spec §4.4, §5)."""

from __future__ import annotations

import pytest

from otseg.config import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from otseg.data.facts import dataset_facts
from otseg.model.presets import PRESETS, describe_preset, get_preset, list_presets

EXPECTED = [
    "voc12-inductive", "voc12-transductive", "voc12-fully",
    "context59-inductive", "context59-transductive", "context59-fully",
    "coco-inductive", "coco-transductive", "coco-fully",
    "coco-to-voc12", "coco-to-context59", "coco-to-ade20k", "context59-to-voc12", "context59-to-coco",
]  # fmt: skip

# name: (dataset, setting, image_size, tokens, num_prompts, npy, crop, stride, short side, n_unseen)
# fmt: off
Row = tuple[str, str, int, int, int, str | None, int, int, int, int]
TABLE: dict[str, Row] = {
    "voc12-inductive": ("voc12", "inductive", 512, 10, 6, "voc12_otseg.npy", 512, 426, 512, 5),
    "voc12-transductive": ("voc12", "transductive", 512, 10, 6, "voc12_otseg.npy", 512, 426, 512, 5),
    "voc12-fully": ("voc12", "fully", 512, 10, 6, "voc12_otseg.npy", 512, 426, 512, 0),
    "context59-inductive": ("context59", "inductive", 480, 10, 8, "context_otseg.npy", 480, 80, 520, 10),
    "context59-transductive": ("context59", "transductive", 480, 10, 8, "context_otseg.npy",
                               420, 80, 520, 10),
    "context59-fully": ("context59", "fully", 480, 10, 8, "context_otseg.npy", 480, 80, 520, 0),
    "coco-inductive": ("coco_stuff164k", "inductive", 512, 100, 8, "coco_otseg.npy", 512, 426, 512, 15),
    "coco-transductive": ("coco_stuff164k", "transductive", 512, 100, 8, "coco_otseg.npy", 512, 426, 512, 15),
    "coco-fully": ("coco_stuff164k", "fully", 512, 100, 8, "coco_otseg.npy", 512, 426, 512, 0),
    "coco-to-voc12": ("voc12", "fully", 512, 100, 6, "voc12_otseg.npy", 512, 380, 512, 0),
    "coco-to-context59": ("context59", "fully", 512, 100, 8, "context_otseg.npy", 512, 426, 520, 0),
    "coco-to-ade20k": ("ade20k", "fully", 512, 100, 8, None, 512, 426, 512, 0),
    "context59-to-voc12": ("voc12", "fully", 480, 10, 6, "voc12_otseg.npy", 480, 80, 512, 0),
    "context59-to-coco": ("coco_stuff164k", "fully", 480, 10, 8, "coco_otseg.npy", 480, 80, 512, 0),
}
# fmt: on


def test_names() -> None:
    assert list_presets() == EXPECTED
    assert set(PRESETS) == set(TABLE)
    assert all(callable(b) for b in PRESETS.values())


@pytest.mark.parametrize("name", EXPECTED)
def test_preset_values(name: str) -> None:
    cfg = get_preset(name)
    dataset, setting, img, tokens, n_prompts, npy, crop, stride, short, n_unseen = TABLE[name]
    assert isinstance(cfg, ModelConfig)
    assert cfg.name == name
    assert cfg.dataset == dataset
    assert cfg.setting == setting
    assert cfg.vision.image_size == img
    assert cfg.vision.grid_size == img // 16
    assert cfg.head.output_size == img
    assert cfg.vision.num_prompt_tokens == tokens
    assert cfg.vision.deep_prompt_layers == 11
    assert cfg.num_prompts == n_prompts
    assert cfg.reference_embeddings == npy
    assert (cfg.crop_size, cfg.stride) == (crop, stride)
    assert cfg.test_short_side == short
    assert cfg.test_mode == "slide"
    assert len(cfg.unseen_classes) == n_unseen
    dc = dataset_facts(dataset).classes
    assert cfg.class_names == dc.class_names
    if n_unseen:
        assert cfg.unseen_classes == dc.unseen
        assert cfg.seen_classes == dc.seen
    else:
        assert cfg.seen_classes == tuple(range(dc.num_classes))
    # round trip through the plain-dict form
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_grid_sizes() -> None:
    assert get_preset("voc12-inductive").vision.grid_size == 32
    assert get_preset("coco-inductive").vision.grid_size == 32
    assert get_preset("context59-inductive").vision.grid_size == 30
    assert get_preset("context59-to-coco").vision.grid_size == 30


def test_voc_presets_use_voc_embeddings() -> None:
    # The reference VOC ST / fully configs point at context_otseg.npy (spec §8 bug 1).
    for name in ("voc12-inductive", "voc12-transductive", "voc12-fully"):
        assert get_preset(name).reference_embeddings == "voc12_otseg.npy"


def test_seen_bias_by_setting() -> None:
    for name in EXPECTED:
        cfg = get_preset(name)
        assert cfg.apply_seen_bias == (cfg.setting != "transductive")
        if cfg.setting == "transductive":
            assert not cfg.apply_seen_bias
        if cfg.setting == "fully":
            assert cfg.unseen_classes == ()
    assert not get_preset("coco-transductive").apply_seen_bias
    assert get_preset("coco-inductive").apply_seen_bias


def test_normalisation() -> None:
    ade = get_preset("coco-to-ade20k")
    assert (ade.mean, ade.std) == (CLIP_MEAN, CLIP_STD)
    for name in EXPECTED:
        if name != "coco-to-ade20k":
            cfg = get_preset(name)
            assert (cfg.mean, cfg.std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_cross_dataset_uses_target_classes() -> None:
    assert get_preset("coco-to-voc12").num_classes == 20
    assert get_preset("coco-to-context59").num_classes == 59
    assert get_preset("coco-to-ade20k").num_classes == 150
    assert get_preset("context59-to-voc12").num_classes == 20
    assert get_preset("context59-to-coco").num_classes == 171


def test_independent_copies() -> None:
    a = get_preset("voc12-inductive")
    b = get_preset("voc12-inductive")
    assert a == b
    assert a is not b and a.vision is not b.vision and a.head is not b.head and a.text is not b.text
    a.vision.num_prompt_tokens = 99
    a.head.use_mps = False
    a.crop_size = 1
    c = get_preset("voc12-inductive")
    assert c.vision.num_prompt_tokens == 10 and c.head.use_mps and c.crop_size == 512


def test_unknown_preset_lists_names() -> None:
    with pytest.raises(KeyError) as exc:
        get_preset("voc-inductive")
    msg = str(exc.value)
    for name in EXPECTED:
        assert name in msg


def test_docstrings_cite_reference_configs() -> None:
    for name, builder in PRESETS.items():
        assert builder.__doc__ and "configs/" in builder.__doc__, name


@pytest.mark.parametrize("name", EXPECTED)
def test_describe(name: str) -> None:
    text = describe_preset(name)
    assert text.startswith(name)
    assert len(text.splitlines()) >= 5
    assert str(get_preset(name).crop_size) in text
