"""The OpenCV backend of the transforms gives the numpy restatement's outputs bit for bit, on generated samples."""

from __future__ import annotations

import numpy as np
import pytest

from otseg.config import DataConfig
from otseg.data import pixel_ops
from otseg.data import transforms as T
from otseg.data.transforms import (
    PhotoMetricDistortion,
    RandomRescale,
    TestTransform,
    TrainTransform,
    hsv_to_rgb,
    resize_bilinear,
    resize_nearest,
    rgb_to_hsv,
)


def _sample(rng: np.random.Generator, h: int, w: int, classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image with noise and a blocky label map of a few classes (255 = ignore borders)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 256], axis=-1)
    image = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    blocks = rng.integers(0, classes, (4, 4))
    label = blocks[np.minimum(yy * 4 // h, 3), np.minimum(xx * 4 // w, 3)].astype(np.uint8)
    label[:2] = 255
    return image, label


def _tiny_config() -> DataConfig:
    return DataConfig(img_scale=(256, 64), crop_size=64, test_short_side=48)


@pytest.mark.parametrize("config", [_tiny_config(), DataConfig()], ids=["crop64", "voc"])
def test_train_transform_identical_on_generated_samples(config):
    rng = np.random.default_rng(0)
    opencv, numpy_ = TrainTransform(config, backend="opencv"), TrainTransform(config, backend="numpy")
    count = 60 if config.crop_size == 64 else 5
    for i in range(count):
        h, w = (int(v) for v in rng.integers(24, 140, 2)) if config.crop_size == 64 else (375, 500 - i)
        image, label = _sample(rng, h, w)
        a_img, a_lab = opencv(image, label, np.random.default_rng(i))
        b_img, b_lab = numpy_(image, label, np.random.default_rng(i))
        assert np.array_equal(a_img.numpy(), b_img.numpy()), (i, h, w)
        assert a_lab is not None and b_lab is not None and np.array_equal(a_lab.numpy(), b_lab.numpy()), (i, h, w)


def test_test_transform_identical():
    rng = np.random.default_rng(1)
    for h, w in [(375, 500), (500, 333), (17, 23), (48, 48), (96, 64)]:
        image, label = _sample(rng, h, w)
        a, _ = TestTransform(_tiny_config(), backend="opencv")(image, label)
        b, _ = TestTransform(_tiny_config(), backend="numpy")(image, label)
        assert np.array_equal(a.numpy(), b.numpy()), (h, w)


@pytest.mark.parametrize("width", [1, 15, 16, 17, 31, 33, 63, 64, 65, 100, 127, 128, 211, 500, 513])
def test_hsv_conversions_identical_at_every_row_tail(width):
    rng = np.random.default_rng(width)
    rgb = rng.integers(0, 256, (9, width, 3), dtype=np.uint8)
    hsv = rgb_to_hsv(rgb, "numpy")
    assert np.array_equal(rgb_to_hsv(rgb, "opencv"), hsv)
    hsv = rng.integers(0, 256, (9, width, 3), dtype=np.uint8)
    hsv[..., 0] %= 180
    assert np.array_equal(hsv_to_rgb(hsv, "opencv"), hsv_to_rgb(hsv, "numpy"))


def test_opencv_alone_differs_on_row_tails_only():
    # Why the last pixels of each row are ours: OpenCV's scalar tail rounds (docs/speed.md).
    rng = np.random.default_rng(5)
    hsv = rng.integers(0, 256, (40, 500, 3), dtype=np.uint8)
    hsv[..., 0] %= 180
    cv2_alone = pixel_ops.cv2.cvtColor(hsv, pixel_ops.cv2.COLOR_HSV2RGB).astype(int)
    diff = np.abs(cv2_alone - hsv_to_rgb(hsv, "numpy"))
    assert diff.max() <= 1
    columns = np.nonzero(diff.any(axis=(0, 2)))[0]
    assert columns.size == 0 or columns.min() >= 500 - 500 % pixel_ops._HSV_TAIL


def test_fallback_when_opencv_disagrees(monkeypatch):
    assert pixel_ops._opencv_hsv_body_agrees()  # on this machine the fast path is taken
    hsv = np.random.default_rng(2).integers(0, 180, (5, 70, 3), dtype=np.uint8)
    called = []
    monkeypatch.setattr(pixel_ops, "_opencv_hsv_body_agrees", lambda: False)
    monkeypatch.setattr(pixel_ops, "_hsv_to_rgb_opencv_body", lambda x: called.append(x))
    assert np.array_equal(hsv_to_rgb(hsv, "opencv"), hsv_to_rgb(hsv, "numpy")) and not called


def test_resizes_identical_for_every_label_dtype_and_odd_inputs():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    flipped = image[:, ::-1]  # a negative-stride view, as RandomFlip makes
    for src in (image, flipped):
        for size in [(74, 106), (18, 26), (37, 200), (1, 1), (100, 7)]:
            assert np.array_equal(resize_bilinear(src, size, "opencv"), resize_bilinear(src, size, "numpy")), size
    one_channel = image[..., :1]
    assert resize_bilinear(one_channel, (20, 30), "opencv").shape == (20, 30, 1)
    assert np.array_equal(
        resize_bilinear(one_channel, (20, 30), "opencv"), resize_bilinear(one_channel, (20, 30), "numpy")
    )
    label = rng.integers(0, 200, (37, 53))
    for dtype in (np.uint8, np.int16, np.uint16, np.int32, np.int64):
        lab = label.astype(dtype)
        for size in [(74, 106), (18, 26), (5, 300)]:
            out = resize_nearest(lab, size, "opencv")
            assert out.dtype == dtype and np.array_equal(out, resize_nearest(lab, size, "numpy")), (dtype, size)


def test_steps_take_the_backend_and_reject_a_bad_one():
    image, label = _sample(np.random.default_rng(4), 90, 120)
    pairs = [
        (RandomRescale((256, 64)), RandomRescale((256, 64), backend="numpy")),
        (PhotoMetricDistortion(), PhotoMetricDistortion(backend="numpy")),
    ]
    for opencv, numpy_ in pairs:
        assert opencv.backend == "opencv" and numpy_.backend == "numpy"
        a_img, a_lab = opencv(image, label, np.random.default_rng(9))
        b_img, b_lab = numpy_(image, label, np.random.default_rng(9))
        assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    with pytest.raises(ValueError, match="backend 'pil' is not one of opencv, numpy"):
        TrainTransform(_tiny_config(), backend="pil")  # type: ignore[arg-type]


def test_normalize_table_gives_the_formulas_bits():
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    mean, std = (122.7709383, 116.7460125, 104.09373615), (68.5005327, 66.6321579, 70.32316305)
    for src in (image, image[:, ::-1], image[5:20, 3:40]):
        a, _ = T.Normalize(mean, std)(src, None)
        b, _ = T.Normalize(mean, std, backend="numpy")(src, None)
        assert a.dtype == np.float32 and a.shape == src.shape and np.array_equal(a, b)


def test_crop_class_counts_identical():
    rng = np.random.default_rng(7)
    opencv, numpy_ = T.RandomCrop(16, 0.75, 255), T.RandomCrop(16, 0.75, 255, backend="numpy")
    cases = [np.full((16, 16), 3), np.full((16, 16), 255), np.zeros((0, 16))]
    cases += [rng.choice([0, 1, 2, 255], (16, 16), p=p) for p in ([0.7, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.4])]
    cases += [rng.integers(0, 3, (16, 16)) * 100 for _ in range(20)]
    for label in cases:
        for dtype in (np.uint8, np.int64):
            lab = label.astype(dtype)
            assert opencv.acceptable(lab) == numpy_.acceptable(lab), (label, dtype)
    odd_ignore = T.RandomCrop(16, 0.75, ignore_index=-1)
    lab = np.array([[0, 255], [255, 255]], np.uint8)
    assert odd_ignore.acceptable(lab) == T.RandomCrop(16, 0.75, -1, backend="numpy").acceptable(lab)
