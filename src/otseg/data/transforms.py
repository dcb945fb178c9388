"""Training and test transforms with mmsegmentation 0.24 semantics (`reference-spec.md` §4.5), in OpenCV, numpy
and torch.

The reference pipelines are, for training:
    Resize(img_scale, ratio_range) -> RandomCrop(cat_max_ratio) -> RandomFlip -> PhotoMetricDistortion
    -> Normalize -> Pad(crop, image 0, label 255)
and for testing: keep-ratio Resize (short side = `test_short_side`, no long-side cap) -> Normalize.

Conventions:
* Images are uint8 `(H, W, 3)` **RGB** arrays until `Normalize`, float32 afterwards. The reference loads BGR
  with OpenCV and converts to RGB in `Normalize`; every operation in between is either channel-agnostic or
  (the HSV ops) colour-order-aware, so working in RGB throughout gives the same numbers.
* Labels are integer `(H, W)` arrays of class ids with 255 = ignore; they keep their dtype until the tensor.
* Every random draw comes from a `numpy.random.Generator` passed in (or owned by the composed transform),
  never from global state, so a fixed seed reproduces a sample exactly.
* Resampling reproduces OpenCV (which mmcv uses) bit for bit: fixed-point bilinear with half-pixel centres
  and no antialiasing for images, and OpenCV's nearest rule (`src = floor(dst * in / out)`) for labels. The
  HSV conversions reproduce OpenCV's 8-bit ones, so PhotoMetricDistortion matches mmseg's arithmetic, and
  `Normalize` reproduces `mmcv.imnormalize`'s rounding. (Verified against opencv-python-headless 4.5.5 and
  5.0 on x86-64; the golden values in tests/data/test_transforms.py come from 4.5.5.)
* Backends: the resizes, RGB->HSV, the crop's class counts and `Normalize` (a lookup table) run in OpenCV
  (`backend="opencv"`, the default: the library mmcv itself calls, several times faster), or in the numpy
  restatement (`backend="numpy"`); both give the same bits (tests/data/test_transforms_opencv.py). HSV->RGB is
  the exception: OpenCV computes the last pixels of each row (the part shorter than its SIMD width) in a scalar
  loop that rounds where the vector code truncates, so it differs from the numpy restatement by one level on
  those pixels. The "opencv" backend takes OpenCV's output for the rest of each row and the numpy restatement
  for the last `_HSV_TAIL` pixels, which is the numpy result bit for bit (checked once per process on a test
  image; if this OpenCV build disagrees, the numpy restatement is used whole). docs/speed.md says which of the
  two is closer to the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np
import torch

from otseg.config import DataConfig
from otseg.data.pixel_ops import (
    BACKENDS,
    Backend,
    check_backend,
    hsv_to_rgb,
    keep_ratio_size,
    resize_bilinear,
    resize_nearest,
    rgb_to_hsv,
)
from otseg.errors import BadValueError

__all__ = [
    "BACKENDS",
    "Backend",
    "Normalize",
    "Pad",
    "PhotoMetricDistortion",
    "RandomCrop",
    "RandomFlip",
    "RandomRescale",
    "TestResize",
    "TestTransform",
    "TrainTransform",
    "hsv_to_rgb",
    "reduce_zero_label",
    "resize_bilinear",
    "resize_nearest",
    "rgb_to_hsv",
    "to_tensors",
]

Label = np.ndarray | None


class Step(Protocol):
    """One pipeline step: `(image, label, rng) -> (image, label)`; deterministic steps ignore `rng`."""

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator) -> tuple[np.ndarray, Label]: ...


# ---- label mapping ---------------------------------------------------------------------------------------


def reduce_zero_label(label: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """mmseg's `reduce_zero_label`: id 0 (background) -> ignore, every other id -1, ignore stays ignore.

    Args:
        label: integer array of raw ids, any shape (typically `(H, W)` uint8 as read from a PNG).
    Returns:
        array of the same shape and dtype.
    """
    lab = np.asarray(label)
    out = lab.astype(np.int64) - 1
    out[(lab == 0) | (lab == ignore_index)] = ignore_index
    return out.astype(lab.dtype)


# ---- training steps --------------------------------------------------------------------------------------


class RandomRescale:
    """mmseg `Resize(img_scale, ratio_range, keep_ratio=True)`.

    Draws r ~ U[lo, hi), forms the target scale `(int(s0*r), int(s1*r))` and rescales the image keeping its
    aspect ratio by `min(long_max / long_side, short_max / short_side)`: the image gets as large as possible
    while its long side stays <= the long bound and its short side <= the short bound.
    """

    def __init__(
        self, img_scale: tuple[int, int], ratio_range: tuple[float, float] = (0.5, 2.0), backend: Backend = "opencv"
    ) -> None:
        self.img_scale = tuple(img_scale)
        self.ratio_range = tuple(ratio_range)
        self.backend = check_backend(backend)

    def target_size(self, h: int, w: int, ratio: float) -> tuple[int, int]:
        """Output `(h, w)` for an `h x w` input at ratio `ratio`."""
        scale = (int(self.img_scale[0] * ratio), int(self.img_scale[1] * ratio))
        long_max, short_max = max(scale), min(scale)
        factor = min(long_max / max(h, w), short_max / min(h, w))
        return keep_ratio_size(h, w, factor)

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator) -> tuple[np.ndarray, Label]:
        lo, hi = self.ratio_range
        ratio = rng.random() * (hi - lo) + lo
        size = self.target_size(image.shape[0], image.shape[1], ratio)
        image = resize_bilinear(image, size, self.backend)
        if label is not None:
            label = resize_nearest(label, size, self.backend)
        return image, label


class RandomCrop:
    """mmseg `RandomCrop(crop_size, cat_max_ratio, ignore_index)`.

    A crop window (clipped to the image when the image is smaller) is drawn uniformly. While the labelled
    crop has < 2 non-ignore classes or its largest class covers >= `cat_max_ratio` of its non-ignore pixels,
    a new window is drawn, up to 10 times; the 10th re-draw is used unchecked (as in mmseg).
    """

    max_redraws = 10

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        cat_max_ratio: float = 0.75,
        ignore_index: int = 255,
        backend: Backend = "opencv",
    ):
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.backend = check_backend(backend)

    def draw_bbox(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """A window `(y1, y2, x1, x2)`; y2/x2 may exceed the image (slicing clips them)."""
        margin_h = max(h - self.crop_size[0], 0)
        margin_w = max(w - self.crop_size[1], 0)
        y1 = int(rng.integers(0, margin_h + 1))
        x1 = int(rng.integers(0, margin_w + 1))
        return y1, y1 + self.crop_size[0], x1, x1 + self.crop_size[1]

    def acceptable(self, crop_label: np.ndarray) -> bool:
        """The mmseg criterion: >= 2 labelled classes and the largest < cat_max_ratio of labelled pixels.

        With the "opencv" backend a uint8 label's class counts come from `cv2.calcHist` (exact: a crop has far
        fewer than 2^24 pixels), otherwise from `np.unique`; the same counts.
        """
        if self.backend == "opencv" and crop_label.dtype == np.uint8 and crop_label.ndim == 2:
            histogram = cv2.calcHist([crop_label], [0], None, [256], [0, 256]).ravel().astype(np.int64)
            if 0 <= self.ignore_index < 256:
                histogram[self.ignore_index] = 0
            counts = histogram[histogram > 0]
        else:
            values, counts = np.unique(crop_label, return_counts=True)
            counts = counts[values != self.ignore_index]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator) -> tuple[np.ndarray, Label]:
        h, w = image.shape[:2]
        y1, y2, x1, x2 = self.draw_bbox(h, w, rng)
        if label is not None and self.cat_max_ratio < 1.0:
            for _ in range(self.max_redraws):
                if self.acceptable(label[y1:y2, x1:x2]):
                    break
                y1, y2, x1, x2 = self.draw_bbox(h, w, rng)
        image = image[y1:y2, x1:x2]
        if label is not None:
            label = label[y1:y2, x1:x2]
        return image, label


class RandomFlip:
    """Horizontal flip with probability `prob` (mmseg `RandomFlip(prob)`, direction "horizontal")."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator) -> tuple[np.ndarray, Label]:
        if rng.random() < self.prob:
            image = image[:, ::-1]
            if label is not None:
                label = label[:, ::-1]
        return image, label


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # mmseg's `convert`: float32 affine, clip, then *truncate* back to uint8 after every op.
    out = values.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


class PhotoMetricDistortion:
    """mmseg `PhotoMetricDistortion` on a uint8 RGB image; the label is untouched.

    In order: brightness (+U(-d, d)), contrast (xU(lo, hi)) either now or last (a fair coin), saturation
    (xU(lo, hi) on HSV S), hue (+randint[-d, d) on HSV H, mod 180), then contrast if it was deferred. Each op
    fires with probability 0.5, and every op re-quantises to uint8 as mmseg does.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        backend: Backend = "opencv",
    ) -> None:
        self.backend = check_backend(backend)
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def brightness(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            return _convert(image, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        return image

    def contrast(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            return _convert(image, alpha=rng.uniform(self.contrast_range[0], self.contrast_range[1]))
        return image

    def saturation(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            hsv = rgb_to_hsv(image, self.backend)
            hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(self.saturation_range[0], self.saturation_range[1]))
            return hsv_to_rgb(hsv, self.backend)
        return image

    def hue(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            hsv = rgb_to_hsv(image, self.backend)
            # np.random.randint(-d, d) excludes +d; Generator.integers has the same half-open convention.
            delta = int(rng.integers(-self.hue_delta, self.hue_delta)) if self.hue_delta > 0 else 0
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + delta) % 180
            return hsv_to_rgb(hsv, self.backend)
        return image

    def __call__(self, image: np.ndarray, label: Label, rng: np.random.Generator) -> tuple[np.ndarray, Label]:
        if image.dtype != np.uint8:
            raise TypeError(f"PhotoMetricDistortion expects a uint8 image, got {image.dtype}")
        image = self.brightness(image, rng)
        contrast_first = bool(rng.integers(2))
        if contrast_first:
            image = self.contrast(image, rng)
        image = self.saturation(image, rng)
        image = self.hue(image, rng)
        if not contrast_first:
            image = self.contrast(image, rng)
        return image, label


# ---- deterministic steps ---------------------------------------------------------------------------------


class Normalize:
    """`(image - mean) / std` per RGB channel on the 0..255 scale; uint8 `(H, W, 3)` -> float32 `(H, W, 3)`.

    `backend`: "opencv" looks the 256 x 3 possible outputs up with `cv2.LUT` (a table computed by the numpy
    formula, so the same bits), "numpy" computes each pixel.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], backend: Backend = "opencv") -> None:
        # mmcv.imnormalize: cv2.subtract with the mean rounded to float32, then cv2.multiply by 1/std evaluated in
        # double and rounded once; reproducing that order makes the output bit-identical.
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
        self.inv_std = (1.0 / np.asarray(std, dtype=np.float64)).reshape(1, 1, 3)
        self.backend = check_backend(backend)
        every_value = np.repeat(np.arange(256, dtype=np.uint8).reshape(256, 1, 1), 3, axis=2)
        self._table = self._formula(every_value)  # (256, 1, 3) float32: output of value v in channel c at [v, 0, c]

    def _formula(self, image: np.ndarray) -> np.ndarray:
        centred = image.astype(np.float32) - self.mean
        return (centred.astype(np.float64) * self.inv_std).astype(np.float32)

    def __call__(
        self, image: np.ndarray, label: Label, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, Label]:
        if self.backend == "opencv" and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            return cv2.LUT(np.ascontiguousarray(image), self._table), label
        return self._formula(image), label


class Pad:
    """Pad bottom/right to `size` (a square int or `(h, w)`): image with `pad_val`, label with `seg_pad_val`."""

    def __init__(self, size: int | tuple[int, int], pad_val: float = 0.0, seg_pad_val: int = 255) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    def __call__(
        self, image: np.ndarray, label: Label, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, Label]:
        h, w = image.shape[:2]
        ph, pw = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if ph or pw:
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=self.pad_val)
            if label is not None:
                label = np.pad(label, ((0, ph), (0, pw)), constant_values=self.seg_pad_val)
        return image, label


class TestResize:
    """Keep-ratio resize so that the short side equals `short_side` (no long-side cap); label untouched.

    This is mmseg 0.24's test `Resize(keep_ratio=True, min_size=...)`, which sets the short side exactly.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, short_side: int, backend: Backend = "opencv") -> None:
        self.short_side = short_side
        self.backend = check_backend(backend)

    def target_size(self, h: int, w: int) -> tuple[int, int]:
        return keep_ratio_size(h, w, self.short_side / min(h, w))

    def __call__(
        self, image: np.ndarray, label: Label, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, Label]:
        return resize_bilinear(image, self.target_size(image.shape[0], image.shape[1]), self.backend), label


def to_tensors(image: np.ndarray, label: Label) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(H, W, 3)` array -> float32 `(3, H, W)` tensor; `(H, W)` label -> int64 `(H, W)` tensor (or None)."""
    img_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
    lab_t = None if label is None else torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
    return img_t, lab_t


def _check_inputs(image: np.ndarray, label: Label) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BadValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    if label is not None and label.shape != image.shape[:2]:
        raise BadValueError(f"label shape {label.shape} does not match image shape {image.shape[:2]}")


# ---- composed pipelines ----------------------------------------------------------------------------------


class TrainTransform:
    """The reference training pipeline as one callable.

    `__call__(image, label, rng=None)`:
        image: uint8 `(H, W, 3)` RGB; label: integer `(H, W)` ids with 255 = ignore (reduce_zero_label already
        applied), or None.
        Returns float32 `(3, S, S)` and int64 `(S, S)` tensors, S = `cfg.crop_size` (padding: image 0 after
        normalisation, label `cfg.ignore_index`).
    Randomness comes from `rng` if given (e.g. a per-sample generator for deterministic loading), else from
    the generator owned by this transform (`self.rng`, reseedable per DataLoader worker). `backend`: "opencv"
    (default) or "numpy", the same outputs (module docstring).
    """

    def __init__(self, cfg: DataConfig, rng: np.random.Generator | None = None, backend: Backend = "opencv") -> None:
        self.cfg = cfg
        self.rng = rng if rng is not None else np.random.default_rng()
        self.backend = check_backend(backend)
        photometric = (cfg.brightness_delta, cfg.contrast_range, cfg.saturation_range, cfg.hue_delta)
        self.augment_steps: list[Step] = [
            RandomRescale(cfg.img_scale, cfg.ratio_range, backend),
            RandomCrop(cfg.crop_size, cfg.cat_max_ratio, cfg.ignore_index, backend),
            RandomFlip(cfg.flip_prob),
            PhotoMetricDistortion(*photometric, backend=backend),
        ]
        self.normalize = Normalize(cfg.mean, cfg.std, backend)
        self.pad = Pad(cfg.crop_size, 0.0, cfg.ignore_index)

    def augment(
        self, image: np.ndarray, label: Label = None, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, Label]:
        """The random part only: uint8 `(h, w, 3)` and label `(h, w)` with h, w <= crop (no normalise, no pad)."""
        _check_inputs(image, label)
        rng = rng if rng is not None else self.rng
        for step in self.augment_steps:
            image, label = step(image, label, rng)
        return image, label

    def __call__(
        self, image: np.ndarray, label: Label = None, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        image, label = self.augment(image, label, rng)
        image, label = self.normalize(image, label)
        image, label = self.pad(image, label)
        return to_tensors(image, label)


class TestTransform:
    """The reference test pipeline: keep-ratio resize to `cfg.test_short_side`, then normalise.

    `__call__(image, label=None, rng=None)` returns a float32 `(3, H', W')` tensor with min(H', W') =
    `test_short_side`, and the label as an int64 `(H, W)` tensor at the **original** resolution: the metric
    compares predictions resized back to the original size with the original ground truth (mmseg).
    `rng` is accepted (and ignored) so both transforms share one call signature. `backend` as in
    `TrainTransform`.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, cfg: DataConfig, backend: Backend = "opencv") -> None:
        self.cfg = cfg
        self.resize = TestResize(cfg.test_short_side, backend)
        self.normalize = Normalize(cfg.mean, cfg.std, backend)

    def __call__(
        self, image: np.ndarray, label: Label = None, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        _check_inputs(image, label)
        image, _ = self.resize(image, None)
        image, _ = self.normalize(image, None)
        return to_tensors(image, label)
