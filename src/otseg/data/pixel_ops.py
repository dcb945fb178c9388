"""The pixel operations of the data pipeline, each bit-identical to what mmcv ran through OpenCV: bilinear and
nearest resizes, and the 8-bit RGB <-> HSV conversions of the photometric distortion. Each has two backends:
"opencv" (OpenCV itself, the fast default) and "numpy" (a restatement of OpenCV's fixed-point arithmetic, kept as
the reference the tests compare against)."""

from __future__ import annotations

import functools
from typing import Literal

import cv2
import numpy as np

from otseg.errors import BadValueError

__all__ = ["BACKENDS", "Backend", "check_backend", "hsv_to_rgb", "keep_ratio_size", "resize_bilinear",
           "resize_nearest", "rgb_to_hsv"]  # fmt: skip

Backend = Literal["opencv", "numpy"]
BACKENDS: tuple[Backend, ...] = ("opencv", "numpy")


def check_backend(backend: str) -> Backend:
    if backend not in BACKENDS:
        raise BadValueError(f"transform backend {backend!r} is not one of {', '.join(BACKENDS)}")
    return backend  # type: ignore[return-value]


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
    if check_backend(backend) == "opencv" and image.dtype == np.uint8 and image.ndim == 3 and min(size) > 0:
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
    if check_backend(backend) == "opencv" and label.ndim == 2 and label.dtype in _CV2_LABEL_DTYPES and min(size) > 0:
        return cv2.resize(np.ascontiguousarray(label), (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    # OpenCV picks src = floor(dst * in/out) (not the pixel-centre rule), with in/out formed as 1 / (out/in) in
    # double precision: the same rounding matters where dst * in/out lands on an integer.
    rows = np.minimum(np.floor(np.arange(out_h) * (1.0 / (out_h / h))).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(out_w) * (1.0 / (out_w / w))).astype(np.int64), w - 1)
    return label[rows[:, None], cols[None, :]]


def keep_ratio_size(h: int, w: int, scale_factor: float) -> tuple[int, int]:
    # mmcv `_scale_size`: round half up.
    return int(h * scale_factor + 0.5), int(w * scale_factor + 0.5)


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
    if check_backend(backend) == "opencv" and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
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
    if check_backend(backend) == "opencv" and _opencv_hsv_body_agrees() and hsv.ndim == 3 and hsv.dtype == np.uint8:
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
