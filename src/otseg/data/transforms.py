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

import functools
from collections.abc import Sequence
from typing import Literal, Protocol

import cv2
import numpy as np
import torch

from otseg.config import DataConfig
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
Backend = Literal["opencv", "numpy"]
BACKENDS: tuple[Backend, ...] = ("opencv", "numpy")


def _check_backend(backend: str) -> Backend:
    if backend not in BACKENDS:
        raise BadValueError(f"transform backend {backend!r} is not one of {', '.join(BACKENDS)}")
    return backend  # type: ignore[return-value]


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


# ---- resampling ------------------------------------------------------------------------------------------


def _linear_taps(in_size: int, out_size: int, clamp: bool) -> tuple[np.ndarray, ...]:
    """OpenCV's INTER_LINEAR taps for one axis: source indices (i0, i1) and 11-bit fixed-point weights (w0, w1).

    Source coordinate (dst + 0.5) * in/out - 0.5, computed in double then stored as float like OpenCV. Along x
    OpenCV clamps an out-of-range coordinate to the border pixel with weight (1, 0) (`clamp=True`); along y it
    keeps the fractional weights and clamps only the row indices, which changes the rounding on border rows.
    """
    scale = 1.0 / (out_size / in_size)
    pos = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0.astype(np.float32)).astype(np.float32)
    if clamp:
        low, high = i0 < 0, i0 >= in_size - 1
        frac[low | high] = 0.0
        i0[low] = 0
        i0[high] = in_size - 1
    w0 = np.rint((np.float32(1.0) - frac) * np.float32(2048)).astype(np.int32)  # INTER_RESIZE_COEF_SCALE
    w1 = np.rint(frac * np.float32(2048)).astype(np.int32)
    return np.clip(i0, 0, in_size - 1), np.clip(i0 + 1, 0, in_size - 1), w0, w1


def resize_bilinear(image: np.ndarray, size: tuple[int, int], backend: Backend = "opencv") -> np.ndarray:
    """Resize a uint8 `(H, W, C)` image to `size = (h, w)` exactly as OpenCV's `cv2.resize(..., INTER_LINEAR)`.

    Half-pixel centres, no antialiasing, and OpenCV's 8-bit fixed-point arithmetic (11-bit weights, a
    horizontal pass kept at full precision, then the vertical pass's `mulhi` rounding), so the output is
    bit-identical to mmcv.imresize (checked against opencv-python 4.5.5 and 5.0). An exact 2x shrink of both
    sides is a 2x2 box average, as OpenCV switches to INTER_AREA there. Returns uint8 `(h, w, C)`.
    `backend`: "opencv" calls `cv2.resize`, "numpy" runs the restatement; the same bits.
    """
    h, w = image.shape[:2]
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return image
    if _check_backend(backend) == "opencv" and image.dtype == np.uint8 and image.ndim == 3 and min(size) > 0:
        out = cv2.resize(np.ascontiguousarray(image), (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        return out.reshape(out_h, out_w, image.shape[2])  # OpenCV drops a single channel's axis
    # Pixels are gathered (uint8) before they are widened to int32, so that memory follows the output's width, not
    # the input's: a 64-megapixel photo would otherwise cost 768 MB of int32 here.
    if h == 2 * out_h and w == 2 * out_w:
        box = image[0::2, 0::2].astype(np.int32)
        for dy, dx in ((1, 0), (0, 1), (1, 1)):
            box += image[dy::2, dx::2]
        return ((box + 2) >> 2).astype(np.uint8)
    x0, x1, a0, a1 = _linear_taps(w, out_w, clamp=True)
    y0, y1, b0, b1 = _linear_taps(h, out_h, clamp=False)
    rows = image[:, x0].astype(np.int32) * a0[None, :, None]
    rows += image[:, x1].astype(np.int32) * a1[None, :, None]  # (h, out_w, C), scaled by 2^11
    rows >>= 4
    top = (b0[:, None, None] * rows[y0]) >> 16
    bottom = (b1[:, None, None] * rows[y1]) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


# Label dtypes cv2.resize takes (others, e.g. int64, go through the numpy restatement).
_CV2_LABEL_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.int32)


def resize_nearest(label: np.ndarray, size: tuple[int, int], backend: Backend = "opencv") -> np.ndarray:
    """Resize an `(H, W)` label map to `size = (h, w)` with OpenCV's INTER_NEAREST rule; keeps the dtype.

    `backend`: "opencv" calls `cv2.resize` for 8-, 16- and 32-bit integer labels, "numpy" runs the restatement
    (also used for other dtypes); the same values.
    """
    h, w = label.shape[:2]
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return label
    if _check_backend(backend) == "opencv" and label.ndim == 2 and label.dtype in _CV2_LABEL_DTYPES and min(size) > 0:
        return cv2.resize(np.ascontiguousarray(label), (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    # OpenCV picks src = floor(dst * in/out) (not the pixel-centre rule), with in/out formed as 1 / (out/in) in
    # double precision: the same rounding matters where dst * in/out lands on an integer.
    rows = np.minimum(np.floor(np.arange(out_h) * (1.0 / (out_h / h))).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(out_w) * (1.0 / (out_w / w))).astype(np.int64), w - 1)
    return label[rows[:, None], cols[None, :]]


def _keep_ratio_size(h: int, w: int, scale_factor: float) -> tuple[int, int]:
    # mmcv `_scale_size`: round half up.
    return int(h * scale_factor + 0.5), int(w * scale_factor + 0.5)


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
        self.backend = _check_backend(backend)

    def target_size(self, h: int, w: int, ratio: float) -> tuple[int, int]:
        """Output `(h, w)` for an `h x w` input at ratio `ratio`."""
        scale = (int(self.img_scale[0] * ratio), int(self.img_scale[1] * ratio))
        long_max, short_max = max(scale), min(scale)
        factor = min(long_max / max(h, w), short_max / min(h, w))
        return _keep_ratio_size(h, w, factor)

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
        self.backend = _check_backend(backend)

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


# OpenCV's 8-bit RGB->HSV uses fixed-point reciprocal tables (hsv_shift = 12); reproducing them makes the
# hue/saturation ops bit-identical to `mmcv.bgr2hsv` on uint8 input.
_HSV_SHIFT = 12
_SDIV = np.array([0] + [round((255 << _HSV_SHIFT) / i) for i in range(1, 256)], dtype=np.int64)
_HDIV180 = np.array([0] + [round((180 << _HSV_SHIFT) / (6.0 * i)) for i in range(1, 256)], dtype=np.int64)
# For each hue sector, the tab[] index of (r, g, b) in OpenCV's HSV2RGB (its table is stored as (b, g, r)).
_SECTOR_RGB = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]], dtype=np.int64)


def rgb_to_hsv(image: np.ndarray, backend: Backend = "opencv") -> np.ndarray:
    """uint8 RGB `(H, W, 3)` -> uint8 HSV `(H, W, 3)` on OpenCV's 8-bit scale (H in 0..179, S and V in 0..255).

    `backend`: "opencv" calls `cv2.cvtColor(COLOR_RGB2HSV)` (integer tables: the same bits on every CPU),
    "numpy" runs the restatement.
    """
    if _check_backend(backend) == "opencv" and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)
    rgb = image.astype(np.int64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    diff = v - rgb.min(axis=-1)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _HSV_SHIFT
    is_r = v == r
    is_g = (v == g) & ~is_r
    num = np.where(is_r, g - b, np.where(is_g, b - r + 2 * diff, r - g + 4 * diff))
    h = (num * _HDIV180[diff] + half) >> _HSV_SHIFT  # arithmetic shift floors, like C++ on negative ints
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv_to_rgb(hsv: np.ndarray, backend: Backend = "opencv") -> np.ndarray:
    """uint8 HSV `(H, W, 3)` on OpenCV's 8-bit scale -> uint8 RGB `(H, W, 3)`.

    Follows OpenCV's vectorised 8-bit path (float32 maths with fused `1 - s*f`, then *truncation* to uint8),
    which is bit-identical to `cv2.cvtColor(..., COLOR_HSV2BGR)` except on the few pixels at the end of each
    row that OpenCV leaves to its scalar loop (it rounds there: a difference of at most 1 level).
    `backend`: "opencv" takes `cv2.cvtColor` for all but the last `_HSV_TAIL` pixels of each row and this
    restatement for those (the module docstring), "numpy" the restatement alone; the same bits.
    """
    if _check_backend(backend) == "opencv" and _opencv_hsv_body_agrees() and hsv.ndim == 3 and hsv.dtype == np.uint8:
        return _hsv_to_rgb_opencv_body(hsv)
    return _hsv_to_rgb_numpy(hsv)


# OpenCV's vector loop covers whole SIMD blocks of a row (16, 32 or 64 pixels for SSE, AVX2, AVX-512); the rest
# goes to the scalar loop. Recomputing `width % 64` pixels covers the scalar part at every width of vector.
_HSV_TAIL = 64


def _hsv_to_rgb_opencv_body(hsv: np.ndarray) -> np.ndarray:
    width = hsv.shape[1]
    out = cv2.cvtColor(np.ascontiguousarray(hsv), cv2.COLOR_HSV2RGB)
    tail = width % _HSV_TAIL
    if tail:
        out[:, width - tail :] = _hsv_to_rgb_numpy(hsv[:, width - tail :])
    return out


@functools.cache
def _opencv_hsv_body_agrees() -> bool:
    """Whether this OpenCV build's vector HSV->RGB gives the numpy restatement's bits (once per process).

    Checked on every 8-bit hue, saturation and value (a 256 x 180 image with a 31-pixel tail row of its own).
    """
    h, s = np.meshgrid(np.arange(180), np.arange(256), indexing="xy")
    hsv = np.stack([h, s, (s * 7 + h * 3) % 256], axis=-1).astype(np.uint8)  # (256, 180, 3)
    hsv = np.concatenate([hsv, hsv[:, :31]], axis=1)  # width 211: tails of 19 (x % 64) and 3 (x % 16) pixels
    return bool(np.array_equal(_hsv_to_rgb_opencv_body(hsv), _hsv_to_rgb_numpy(hsv)))


def _hsv_to_rgb_numpy(hsv: np.ndarray) -> np.ndarray:
    f32 = np.float32
    h = hsv[..., 0].astype(f32) * f32(6.0 / 180.0)
    s = hsv[..., 1].astype(f32) * f32(1.0 / 255.0)
    v = hsv[..., 2].astype(f32) * f32(1.0 / 255.0)
    sector = np.trunc(h)
    frac = h - sector

    def one_minus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # 1 - a*b with a single rounding (the compiler fuses it into an FMA in OpenCV's SIMD code).
        return (1.0 - a.astype(np.float64) * b.astype(np.float64)).astype(f32)

    tab = np.stack([v, v * (f32(1.0) - s), v * one_minus(s, frac), v * one_minus(s, f32(1.0) - frac)], axis=-1)
    idx = _SECTOR_RGB[sector.astype(np.int64) % 6]  # (H, W, 3)
    rgb = np.take_along_axis(tab, idx, axis=-1)
    return np.clip(np.trunc(rgb * f32(255.0)), 0, 255).astype(np.uint8)


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
        self.backend = _check_backend(backend)
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
        self.backend = _check_backend(backend)
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
        self.backend = _check_backend(backend)

    def target_size(self, h: int, w: int) -> tuple[int, int]:
        return _keep_ratio_size(h, w, self.short_side / min(h, w))

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
        self.backend = _check_backend(backend)
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
