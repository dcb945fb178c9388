"""`--set data.KEY=VALUE`: the training pipeline's sizes and augmentation, settable for any dataset.

`otseg.data.facts.data_config_for` derives a `DataConfig` from the model config and the dataset's facts (the
reference's `img_scale`, ratio range and jitter). For a dataset the facts do not describe, a user folder of
64-pixel images for instance, those defaults are wrong: mmseg's `img_scale` (2048, 512) rescales every training
image to a short side of about 512 before the crop. `apply_data_overrides` replaces the fields listed in
`DATA_KEYS`, checked like every config value (one `ValueError` naming the key, the value and what is valid).

What stays tied to the model is not settable here, so that training and evaluation cannot disagree: the training
crop is the model's input size (`--set vision.image_size=N`), the test resize its `test_short_side`, the
normalisation its `mean` / `std`, and `reduce_zero_label` is a fact of the label layout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from otseg.config import DataConfig
from otseg.errors import BadValueError
from otseg.validation import coerce_text

__all__ = ["DATA_KEYS", "TIED_TO_MODEL", "apply_data_overrides", "split_data_overrides"]

# Settable fields, with what a valid value is.
DATA_KEYS: dict[str, str] = {
    "img_scale": "two positive integers (mmseg's (long max, short max) before the ratio), e.g. 64,64",
    "ratio_range": "two numbers 0 < lo <= hi, e.g. 0.75,1.5",
    "cat_max_ratio": "a fraction in (0, 1]",
    "flip_prob": "a probability in [0, 1]",
    "brightness_delta": "an integer in 0..255",
    "contrast_range": "two numbers 0 <= lo <= hi, e.g. 0.5,1.5",
    "saturation_range": "two numbers 0 <= lo <= hi, e.g. 0.5,1.5",
    "hue_delta": "an integer in 0..90 (OpenCV's 0..179 hue scale)",
}
# DataConfig fields that follow the model config instead, and the key that sets them.
TIED_TO_MODEL: dict[str, str] = {
    "crop_size": "vision.image_size (the training crop is the model's input size)",
    "test_short_side": "test_short_side (a model setting, so that eval resizes as training expected)",
    "mean": "mean (a model setting)",
    "std": "std (a model setting)",
    "reduce_zero_label": "nothing: it is a fact of the dataset's label layout",
    "ignore_index": "nothing: labels use 255 for ignored pixels",
    "dataset": "--dataset",
}

_PREFIX = "data."


def split_data_overrides(overrides: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Dotted overrides -> (the "data.*" ones without the prefix, all the others)."""
    data = {k[len(_PREFIX) :]: v for k, v in overrides.items() if k.startswith(_PREFIX)}
    rest = {k: v for k, v in overrides.items() if not k.startswith(_PREFIX)}
    return data, rest


def _pair(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_number(v) for v in value):
        return float(value[0]), float(value[1])
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _valid(key: str, value: Any) -> bool:
    pair = _pair(value)
    if key == "img_scale":
        return (
            pair is not None
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and min(value) > 0
            and max(value) <= 1 << 15
        )
    if key == "ratio_range":
        return pair is not None and 0 < pair[0] <= pair[1] <= 100
    if key in ("contrast_range", "saturation_range"):
        return pair is not None and 0 <= pair[0] <= pair[1] <= 100
    if key == "cat_max_ratio":
        return _is_number(value) and 0 < value <= 1
    if key == "flip_prob":
        return _is_number(value) and 0 <= value <= 1
    if key == "brightness_delta":
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255
    if key == "hue_delta":
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 90
    return False


def apply_data_overrides(cfg: DataConfig, overrides: Mapping[str, Any]) -> DataConfig:
    """A copy of `cfg` with `overrides` (keys without the "data." prefix; command-line strings are converted).

    Raises:
        ValueError: an unknown key, a key that follows the model (`TIED_TO_MODEL`), or a bad value; one line
            naming `data.KEY`, the value and what is valid.
    """
    changes: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key in TIED_TO_MODEL:
            raise BadValueError(f"data.{key} cannot be set on its own: it follows {TIED_TO_MODEL[key]}")
        if key not in DATA_KEYS:
            raise BadValueError(
                f"unknown data setting data.{key} (= {raw!r}); settable: {', '.join(sorted(DATA_KEYS))}"
            )
        current = getattr(cfg, key)
        try:
            value = coerce_text(raw, current, f"data.{key}")
        except ValueError:
            value = None
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, list):
            value = tuple(value)
        if not _valid(key, value):
            raise BadValueError(f"config key data.{key} = {raw!r}: expected {DATA_KEYS[key]}")
        changes[key] = value
    return dataclasses.replace(cfg, **changes)
