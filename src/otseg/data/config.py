"""Typed configuration of the data pipelines (`reference-spec.md` §4.5).

`DataConfig` holds every knob of the reference's mmseg 0.24 train and test pipelines; `data_config_for`
derives it from a model preset (or a `ModelConfig`, or a bare dataset key) so that the training crop, the
test resize and the normalisation always agree with the model they feed.
"""

from __future__ import annotations

from dataclasses import dataclass

from otseg.model.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig

__all__ = ["DATASET_PIPELINES", "DataConfig", "data_config_for"]


@dataclass
class DataConfig:
    """Settings of the training augmentation and the test resize of one dataset.

    Sizes are in pixels; `img_scale` is mmseg's `(long_max, short_max)` pair (the order inside the pair
    does not matter: the keep-ratio rescale uses its max as the long-side bound and its min as the short).
    """

    dataset: str = "voc12"  # key into otseg.data.classes ("custom" for a user folder)
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


@dataclass(frozen=True)
class _PipelineDefaults:
    img_scale: tuple[int, int]
    crop_size: int
    reduce_zero_label: bool
    test_short_side: int


# The reference's `configs/_base_/datasets/*.py`. ADE20K is only a cross-dataset target (test pipeline only).
DATASET_PIPELINES: dict[str, _PipelineDefaults] = {
    "voc12": _PipelineDefaults((2048, 512), 512, True, 512),
    "context59": _PipelineDefaults((520, 520), 480, True, 520),
    "coco_stuff164k": _PipelineDefaults((2048, 512), 512, False, 512),
    "ade20k": _PipelineDefaults((2048, 512), 512, True, 512),
    # A user folder (otseg.data.datasets, "custom" layout): labels are stored as 0..K-1 with 255 = ignore.
    "custom": _PipelineDefaults((2048, 512), 512, False, 512),
}


def data_config_for(preset: str | ModelConfig) -> DataConfig:
    """The `DataConfig` matching a model preset name, a `ModelConfig`, or a dataset key (`voc12`, `custom`, ...).

    The training crop is the model's input resolution (`vision.image_size`), the test short side, mean and
    std come from the model config (so cross-dataset presets use the *target* dataset's test pipeline), and
    `img_scale` / `reduce_zero_label` come from the dataset. Unknown dataset keys get the "custom" pipeline.
    """
    if isinstance(preset, str):
        if preset in DATASET_PIPELINES:
            d = DATASET_PIPELINES[preset]
            return DataConfig(
                dataset=preset,
                img_scale=d.img_scale,
                crop_size=d.crop_size,
                reduce_zero_label=d.reduce_zero_label,
                test_short_side=d.test_short_side,
            )
        from otseg.model.presets import get_preset  # deferred: presets import the class tables

        preset = get_preset(preset)
    cfg = preset
    d = DATASET_PIPELINES.get(cfg.dataset, DATASET_PIPELINES["custom"])
    return DataConfig(
        dataset=cfg.dataset,
        img_scale=d.img_scale,
        crop_size=cfg.vision.image_size,
        reduce_zero_label=d.reduce_zero_label,
        test_short_side=cfg.test_short_side,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
    )
