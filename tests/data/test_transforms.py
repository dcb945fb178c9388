"""Training / test transforms: mmseg 0.24 semantics (spec §4.5), OpenCV-exact resampling and HSV."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import cast

import numpy as np
import pytest
import torch

from otseg.config import CLIP_MEAN, IMAGENET_MEAN, IMAGENET_STD, DataConfig
from otseg.data.facts import data_config_for, dataset_facts
from otseg.data.transforms import (
    Normalize,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    RandomRescale,
    TestResize,
    TestTransform,
    TrainTransform,
    hsv_to_rgb,
    reduce_zero_label,
    resize_bilinear,
    resize_nearest,
    rgb_to_hsv,
)
from otseg.model.presets import get_preset

# cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR) from opencv-python-headless 4.5.5 (mmcv"s backend):
# ((h, w), (out_h, out_w), base64 uint8 input (h, w, 3), base64 uint8 output).
_CV2_RESIZE = [
    (
        (5, 7),
        (9, 12),
        "i0rl8alBBqCVaiavvM2v5WL5CpRfVpPGQidq1astpzlFUTcOmbLXTDQn+kjXMqHfcKyh6SYRWQHdBvJ/jwY80l4ZpiH5vQzMITl8"
        "HseVyndI3APReoiTTYVSc1ei5kZH8D4vuB8iP0GS",
        "i0rlsW6n7aVIcqRuEpGYTUmnglevsrivz5zR3GTyXIGZCpRfeWLbkG2mtHxUfJJiUZV1b0+Ehk2GlY17sI2uxHznYHeJIHRMXIvJ"
        "WWukVjlpjnRNups7qVhKjDxCZUUmfHR2naXUZ2ZuRT4tn3HOeWq8P16gdod9q5xavFQ8pCs/YiFiVm+KWMeqY2Fgah8w+kjXr2na"
        "Op3fVKe9f5uPxk07vxtMawbEM2+yDOh8XF9VjwY85FRtuVadd1noiFbRlk+rgzpsZ0NrQGeoU4yOdqZin0R9ugSPyGMmt05uni7e"
        "qR/VpRm9Wy+ONl98NaiHeJVqyGlJyi+YywrKl3pqh3F2bGSIfU+ejz6lnUBypk5WqWZSs1ZBuzw0jzJ6cyyneoiTaYd6T4VVYWx9"
        "gVWWxEth6URA7z8y1jApsyAnbDRoP0GS",
    ),
    (
        (9, 11),
        (4, 5),
        "UYXwcR73Z3ofEyqBjYghlaEAso1rI2uCSBvZ/mMNw8475OvKty9Fs1IjR59ueU1XA34s/enhWneJeB43IaVX2OWnAylty4HbP2XP"
        "nBvcXR2PyD8LC7Tbcb5XIgmFHT0k9MDPg/5DY/gvR1l3iVX2ztaBy+pxec7SyPgUoTRy/3DONp2DhUUqRPMYM38IzR5hTyNdP4O8"
        "Rf7p7gQDp5vhGFREQTF8kxH4XgQpsZ9+wOFW9lozIueRuIDumV4/DTB9L7r0AGk6F54NAn7U5YvnqevCiicdQ6eIVWOBROtmA/ey"
        "cl3hH+asL4imgYKGl5Pwqtbe2BFuOrUWgcSjdP7HCmiz5L3JKzh5h0FsF+yQlj7HZoiKtLgOunxc/YESG+qc7hgQ39UWn68m",
        "o2eoR29kOoscTGGDmaxWcedGfVDcy9VktMoup4CnZhl9vNRrJt+QdGhQI5muVZGMkqvFaqAwVdSqqp90",
    ),
    (
        (8, 10),
        (4, 5),
        "MMirpE2XIpnox7Qbmh0rDxgGAKl01jtjMiAsmY6CslIsScQ5TH1zJltqr2GyiPvQrs+nZmFiI2EedkyTqjiP+r0KamQSsgmXHi2C"
        "cHb35Jq4+hlycb5To0QrEoza1yutD4ru9CoLmibXT8ePJWK4cBCXpVtVEFQ9J+1gDeMgCmdJMH/TeJnBGIGa9mdDlMP3ql+T8yyB"
        "CjfKe/EBPM34q4q0pgOZVOhMvjs/fxGDw9+DdcUXtOeGqarfdIj4krEhkTh62GrKVthTHJJ7kx/o8W55W5szF2fnEtvo9TMd2ZF/"
        "AeZHEN08JfTSFpCgSUUx",
        "dItqV4l4eGRte4V4WVdYo2uIiEhpXmS4nUmecmxELr5TSI+yY4GQsl5/tYxsdKWgg5KIkYaDKs93eVmN",
    ),
    (
        (6, 9),
        (13, 7),
        "NVUOwBk6i+0Xg9U+yURljR0olgxEsDguk0OOYHiNUeJ5oTH4Ews+pL0vXZXle9eRQ22ED05mVGCBNbv7iF00aVmkmzZAKk89zEif"
        "tlEfvgnl1yv4NOBP4CjKSZHgKr13J5/twgbSMYyouCh6b0t5UglXXXJ31FbA9ugaDlhNcwZg9Wu4tYhHX3Bmwc1xCcUHmpM+6Ffb"
        "dR/yI3Jq2QaX90n3",
        "SUwUqXQrhdwzyURljxgwpSU3l0GATVgrn3pEd7Y/wltbhzROlztHfkV8VnNhhoqBVVpdsZNBdHaXdXJtQ0xyXISLcJauQh51o60x"
        "ZJ3AZ5GDKkt1VXiPZJSqWz19n285XnOKlW5sdi6hVGuVWpOkcluHlztCWE5evE1avBXGiFm5a5KVc2evY3pcVmCfl1CIsSWlu0bd"
        "fJGFdHLWLrh1U3LgclK2pjWDnEOybWt3jmrGgM9PQl6nkEqpr1dvdUKBW0Boq2Cw3uMlL0ZjtEKXu3tca1ZwYGlZm3WA8bZdPD18"
        "rDyN0GyKbXJqba1KfZRG63O2VDi0lDaG6UzNbX1ncslDcaEu6FfbXTbLizSE8z/p",
    ),
]
# cv2.cvtColor(rgb (1, 64, 3), COLOR_RGB2HSV) and cv2.cvtColor(hsv (1, 64, 3), COLOR_HSV2RGB), same build.
_CV2_RGB = (
    "2AFjqMmjVrqR159tJO46FOvUE4bY+u9unmxw30Hbqa61MB5YJLfbDlBPHZcGhpNHaPAFrw1aI920ZfxaSJtD526j44SWm+SHpEDn"
    "w+pSBMq7+b/o5kjK/3cErCbSJ6Bpw5L07rNhwk7zZlMBeLR5kzgiw8DPazy+tK9+z/Ic06QI+AIj45Pd2AhFPWutkO/Yq6K00JYi"
    "bfjURqcD/LK93djh4qCaYz98NJkDy0Y9xPPqM1SD5W9kFoNE0blrQQw7"
)
_CV2_RGB2HSV = (
    "pv7YODDJTom6Dn7XP9juV+nrZ+nYHI/6slGel7XfbBG1gahYYNXbWtJQN/WXI4STL/rwpuyvU9fdOqT8OpGbp4bnrmvjNmjkirjn"
    "JqbqWPrKnzv5m6/mDvv/j9HSTMGgh2b0EZfuja3zGP1mPVW0BsSTfhLPg66+G020I+HyF/XTsP34mFrjq/bYbKWtU2Xvhxq0FNXQ"
    "Uo/4MPqnsEv8iQrhA1Hiin18MvqZArLLVDHzbJyDA5DlSdSDF3zRmdBB"
)
_CV2_HSV = (
    "KGU/IrvzIzMwoyv4QQyRE3g+IDYJR0xOPuqXN9Abqtcqm5cdZxytsb8WPZoFGOh0MHpPECyRq5jwJ3TbUKiJJGCksE7PHCBvXPao"
    "q8E3XXecoTw8oaAwimnChaKTZxdgaC8Klbw8TA/Nqq13nmn1QwDmSsPagLMEptAMEeWUDLpWLNfXTRxRHesnXekcYbFNq82ghr0g"
    "LeDMjeNNkYVQetCpeercN0xvgQvMGCtOcQchpW/UrgXENULAO0Dhb7R/"
)
_CV2_HSV2RGB = (
    "Nj8m2/NALjAm+M7lipGLPjMgCAkHNk4/DJcVCBsEKgYSHQsamqStFgUHAQUCdF4KOE8pkYV38GCLvdt3Lolql6Rmz4+Yb25hBZ2o"
    "Nw0ZU5ScPC02MBEkonLCXjWTV1xgCAkKOg88wM3HdyZB9ZDa5ubmM9qBAQEEDAIGlFoPVjAXgtchSFFNJyUDAhkcF0BNoB9FEwgg"
    "cswYOAhNSSZQKB+pGBLcU29NxcPMTktAICAh1HelxMDAmcCOquGoJUB/"
)


def _decode(b64: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype=np.uint8).reshape(shape)


def _blobs(h: int = 64, w: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 RGB image and a label with a few classes in rectangles (plus some ignore)."""
    rng = np.random.default_rng(seed)
    label = np.zeros((h, w), np.uint8)
    label[: h // 2, : w // 2] = 1
    label[h // 2 :, w // 3 :] = 2
    label[h // 4 : h // 2 + 4, w // 2 :] = 3
    label[:2] = 255
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image, label


class _FixedRng:
    """A stand-in generator: `integers` returns `coin` (or its low bound for ranges), `uniform` returns `value`."""

    def __init__(self, coin: int = 1, value: float = 0.0) -> None:
        self.coin, self.value = coin, value

    def integers(self, low: int, high: int | None = None) -> int:
        return self.coin if high is None else low

    def uniform(self, low: float, high: float) -> float:
        return self.value

    def random(self) -> float:
        return 0.0


def _fixed_rng(coin: int = 1, value: float = 0.0) -> np.random.Generator:
    """A `_FixedRng` where a generator is expected: it has the only methods the photometric steps call."""
    return cast(np.random.Generator, _FixedRng(coin, value))


# ---- label mapping, resampling -------------------------------------------------------------------------


def test_reduce_zero_label() -> None:
    raw = np.array([[0, 1, 2], [20, 254, 255]], np.uint8)
    out = reduce_zero_label(raw)
    assert out.dtype == np.uint8
    assert out.tolist() == [[255, 0, 1], [19, 253, 255]]


@pytest.mark.parametrize("case", range(len(_CV2_RESIZE)))
def test_resize_bilinear_matches_opencv(case: int) -> None:
    (h, w), (oh, ow), src, ref = _CV2_RESIZE[case]
    image = _decode(src, (h, w, 3))
    out = resize_bilinear(image, (oh, ow))
    assert out.dtype == np.uint8 and out.shape == (oh, ow, 3)
    np.testing.assert_array_equal(out, _decode(ref, (oh, ow, 3)))


def test_resize_bilinear_constant_and_identity() -> None:
    image = np.full((7, 9, 3), 77, np.uint8)
    assert (resize_bilinear(image, (20, 3)) == 77).all()
    assert resize_bilinear(image, (7, 9)) is image


def test_resize_nearest_uses_opencv_rule() -> None:
    label = np.arange(4, dtype=np.uint8)[None].repeat(2, axis=0)  # (2, 4)
    assert resize_nearest(label, (2, 2)).tolist() == [[0, 2], [0, 2]]  # floor(dst * 2)
    assert resize_nearest(label, (1, 8))[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert resize_nearest(label, (2, 3))[0].tolist() == [0, 1, 2]  # floor([0, 1.33, 2.67])
    assert resize_nearest(label.astype(np.int64), (4, 4)).dtype == np.int64


def test_hsv_matches_opencv() -> None:
    rgb = _decode(_CV2_RGB, (1, 64, 3))
    np.testing.assert_array_equal(rgb_to_hsv(rgb), _decode(_CV2_RGB2HSV, (1, 64, 3)))
    hsv = _decode(_CV2_HSV, (1, 64, 3))
    np.testing.assert_array_equal(hsv_to_rgb(hsv), _decode(_CV2_HSV2RGB, (1, 64, 3)))


def test_hsv_known_colours_and_round_trip() -> None:
    prim = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [0, 0, 0]]], np.uint8)
    assert rgb_to_hsv(prim)[0].tolist() == [[0, 255, 255], [60, 255, 255], [120, 255, 255], [0, 0, 128], [0, 0, 0]]
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    back = hsv_to_rgb(rgb_to_hsv(image)).astype(int)
    assert np.abs(back - image).max() <= 6  # 8-bit HSV quantisation (H has only 180 steps)


# ---- training steps ------------------------------------------------------------------------------------


def test_rescale_target_size_keeps_ratio_within_bounds() -> None:
    rescale = RandomRescale((2048, 512), (0.5, 2.0))
    assert rescale.target_size(375, 500, 1.0) == (512, 683)  # short side bound binds
    assert rescale.target_size(500, 375, 1.0) == (683, 512)
    assert rescale.target_size(100, 2000, 1.0) == (102, 2048)  # long side bound binds
    ctx = RandomRescale((520, 520))
    assert ctx.target_size(375, 500, 1.5) == (585, 780)  # min(780/500, 780/375) = 1.56
    rng = np.random.default_rng(0)
    image, label = _blobs(375, 500)
    for _ in range(5):
        out, lab = rescale(image, label, rng)
        assert lab is not None
        assert out.dtype == np.uint8 and lab.shape == out.shape[:2]
        assert 256 <= min(out.shape[:2]) <= 1024 and abs(out.shape[1] / out.shape[0] - 500 / 375) < 0.01
        assert set(np.unique(lab)) <= set(np.unique(label))  # nearest never invents label values


def test_random_crop_sizes() -> None:
    rng = np.random.default_rng(0)
    crop = RandomCrop(32, cat_max_ratio=1.0)
    image, label = _blobs()
    out, lab = crop(image, label, rng)
    assert lab is not None
    assert out.shape == (32, 32, 3) and lab.shape == (32, 32)
    small, small_lab = crop(image[:20, :25], label[:20, :25], rng)  # smaller than the crop: kept whole
    assert small_lab is not None
    assert small.shape == (20, 25, 3) and small_lab.shape == (20, 25)


class _CountingCrop(RandomCrop):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.draws = 0

    def draw_bbox(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        self.draws += 1
        return super().draw_bbox(h, w, rng)


def test_random_crop_cat_max_ratio_redraws() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64, 3), np.uint8)
    # One class everywhere: never acceptable -> 1 draw + 10 re-draws, the last one kept.
    crop = _CountingCrop(16, cat_max_ratio=0.75)
    crop(image, np.full((64, 64), 3, np.uint8), rng)
    assert crop.draws == 11
    # Fine stripes of 2 classes: every window is ~50/50 -> accepted at once.
    stripes = (np.arange(64)[None, :].repeat(64, 0) % 2).astype(np.uint8)
    crop = _CountingCrop(16, cat_max_ratio=0.75)
    crop(image, stripes, rng)
    assert crop.draws == 1
    # Ignore pixels do not count as a class: class 1 + ignore is a single class.
    crop = _CountingCrop(16, cat_max_ratio=0.75)
    crop(image, np.where(stripes == 1, 1, 255).astype(np.uint8), rng)
    assert crop.draws == 11
    # A small two-class region in a sea of one class: accepted crops satisfy the criterion.
    label = np.zeros((64, 64), np.uint8)
    label[20:44, 20:44] = 1
    plain_crop = RandomCrop(24, cat_max_ratio=0.75)
    for seed in range(20):
        _, lab = plain_crop(image, label, np.random.default_rng(seed))
        assert lab is not None
        counts = np.bincount(lab.ravel(), minlength=2)
        if plain_crop.acceptable(lab):
            assert len(np.flatnonzero(counts)) == 2 and counts.max() / counts.sum() < 0.75
    # With the criterion off (ratio 1) there is a single draw.
    crop = _CountingCrop(16, cat_max_ratio=1.0)
    crop(image, label, rng)
    assert crop.draws == 1


def test_random_flip() -> None:
    image, label = _blobs()
    out, lab = RandomFlip(1.0)(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(out, image[:, ::-1])
    np.testing.assert_array_equal(lab, label[:, ::-1])
    out, lab = RandomFlip(0.0)(image, label, np.random.default_rng(0))
    assert out is image and lab is label


def test_photometric_keeps_uint8_range_and_clips() -> None:
    pmd = PhotoMetricDistortion()
    bright = np.full((4, 4, 3), 250, np.uint8)
    assert (pmd.brightness(bright, _fixed_rng(1, 32.0)) == 255).all()  # clipped, not wrapped to 26
    dark = np.full((4, 4, 3), 10, np.uint8)
    assert (pmd.brightness(dark, _fixed_rng(1, -32.0)) == 0).all()
    assert (pmd.contrast(bright, _fixed_rng(1, 1.5)) == 255).all()
    # mmseg truncates after each op: 101 * 0.5 = 50.5 -> 50.
    assert (pmd.contrast(np.full((2, 2, 3), 101, np.uint8), _fixed_rng(1, 0.5)) == 50).all()
    assert pmd.brightness(bright, _fixed_rng(0, 32.0)) is bright  # coin 0: op skipped
    image, label = _blobs()
    for seed in range(10):
        out, lab = pmd(image, label, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == image.shape and lab is label


def test_photometric_hue_shift_wraps_mod_180() -> None:
    pmd = PhotoMetricDistortion(hue_delta=18)
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255  # H = 0
    out = pmd.hue(red, _fixed_rng(1))  # delta = -18 (the low bound) -> H = 162 (magenta side)
    assert rgb_to_hsv(out)[0, 0, 0] == 162


def test_normalize_uses_imagenet_stats() -> None:
    cfg = DataConfig()
    assert cfg.mean == IMAGENET_MEAN and cfg.std == IMAGENET_STD
    image = np.zeros((2, 2, 3), np.uint8)
    out, _ = Normalize(cfg.mean, cfg.std)(image, None)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], -np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD), rtol=1e-6)
    image[:] = 255
    expected = (255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(Normalize(cfg.mean, cfg.std)(image, None)[0][1, 1], expected, rtol=1e-6)


def test_pad() -> None:
    image = np.ones((3, 5, 3), np.float32)
    label = np.zeros((3, 5), np.uint8)
    out, lab = Pad(6, 0.0, 255)(image, label)
    assert lab is not None
    assert out.shape == (6, 6, 3) and lab.shape == (6, 6)
    assert (out[3:] == 0).all() and (out[:, 5:] == 0).all() and (out[:3, :5] == 1).all()
    assert (lab[3:] == 255).all() and (lab[:, 5:] == 255).all() and (lab[:3, :5] == 0).all()


def test_test_resize_short_side() -> None:
    resize = TestResize(512)
    assert resize.target_size(375, 500) == (512, 683)
    assert resize.target_size(500, 375) == (683, 512)
    assert resize.target_size(64, 80) == (512, 640)
    assert resize.target_size(100, 3000) == (512, 15360)  # no long-side cap
    assert TestResize(520).target_size(375, 500) == (520, 693)


# ---- composed pipelines --------------------------------------------------------------------------------


def _small_cfg(**kw) -> DataConfig:
    return DataConfig(img_scale=(160, 64), crop_size=48, **kw)


def test_train_transform_shapes_dtypes_and_padding() -> None:
    image, label = _blobs()
    # ratio 1 on a 64x80 image with scale (100, 50): factor 50/64 -> 50x63, smaller than the 128 crop.
    cfg = DataConfig(img_scale=(100, 50), ratio_range=(1.0, 1.0), crop_size=128, flip_prob=0.0)
    img_t, lab_t = TrainTransform(cfg, np.random.default_rng(0))(image, label)
    assert lab_t is not None
    assert img_t.dtype == torch.float32 and img_t.shape == (3, 128, 128)
    assert lab_t.dtype == torch.int64 and lab_t.shape == (128, 128)
    assert (lab_t[50:] == 255).all() and (lab_t[:, 63:] == 255).all()
    assert (img_t[:, 50:] == 0).all() and (img_t[:, :, 63:] == 0).all()
    assert set(lab_t[:50, :63].unique().tolist()) <= {0, 1, 2, 3, 255}
    # Default-sized run: crop-sized output even for a small source image.
    voc = data_config_for(get_preset("voc12-inductive"))
    img_t, lab_t = TrainTransform(voc, np.random.default_rng(1))(image, label)
    assert lab_t is not None
    assert img_t.shape == (3, 512, 512) and lab_t.shape == (512, 512)


def test_train_transform_is_deterministic_given_a_seed() -> None:
    image, label = _blobs()
    cfg = _small_cfg()
    a = TrainTransform(cfg, np.random.default_rng(123))(image, label)
    b = TrainTransform(cfg, np.random.default_rng(123))(image, label)
    assert a[1] is not None and b[1] is not None
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # A per-call generator overrides the transform's own one.
    t = TrainTransform(cfg, np.random.default_rng(999))
    c = t(image, label, rng=np.random.default_rng(123))
    assert c[1] is not None
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    outs = [TrainTransform(cfg, np.random.default_rng(s))(image, label)[0] for s in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_train_transform_without_label() -> None:
    image, _ = _blobs()
    img_t, lab_t = TrainTransform(_small_cfg(), np.random.default_rng(0))(image, None)
    assert img_t.shape == (3, 48, 48) and lab_t is None


def test_train_transform_rejects_bad_inputs() -> None:
    t = TrainTransform(_small_cfg(), np.random.default_rng(0))
    image, label = _blobs()
    with pytest.raises(ValueError, match="uint8"):
        t(image.astype(np.float32), label)
    with pytest.raises(ValueError, match="does not match"):
        t(image, label[:10])


def test_test_transform() -> None:
    image, label = _blobs(64, 80)
    cfg = data_config_for(get_preset("voc12-inductive"))
    img_t, lab_t = TestTransform(cfg)(image, label)
    assert lab_t is not None
    assert img_t.shape == (3, 512, 640) and img_t.dtype == torch.float32
    # The label stays at the original resolution (metrics compare at the original size).
    assert lab_t.shape == (64, 80) and lab_t.dtype == torch.int64
    assert torch.equal(lab_t, torch.from_numpy(label.astype(np.int64)))
    assert TestTransform(data_config_for(get_preset("context59-inductive")))(image)[0].shape == (3, 520, 650)
    assert TestTransform(cfg)(image, None)[1] is None


@pytest.mark.parametrize(
    ("preset", "img_scale", "crop", "reduce", "short", "mean"),
    [
        ("voc12-inductive", (2048, 512), 512, True, 512, IMAGENET_MEAN),
        ("context59-inductive", (520, 520), 480, True, 520, IMAGENET_MEAN),
        ("context59-transductive", (520, 520), 480, True, 520, IMAGENET_MEAN),
        ("coco-fully", (2048, 512), 512, False, 512, IMAGENET_MEAN),
        ("coco-to-ade20k", (2048, 512), 512, True, 512, CLIP_MEAN),
        ("context59-to-voc12", (2048, 512), 480, True, 512, IMAGENET_MEAN),
    ],
)
def test_data_config_for(preset, img_scale, crop, reduce, short, mean) -> None:
    cfg = data_config_for(get_preset(preset))
    assert cfg.img_scale == img_scale and cfg.crop_size == crop
    assert cfg.reduce_zero_label is reduce and cfg.test_short_side == short and cfg.mean == mean
    assert cfg.ratio_range == (0.5, 2.0) and cfg.cat_max_ratio == 0.75 and cfg.ignore_index == 255


@pytest.mark.parametrize(
    ("preset", "dataset"),
    [("voc12-inductive", "voc12"), ("context59-inductive", "context59"), ("coco-inductive", "coco_stuff164k")],
)
def test_data_config_for_reads_the_facts_table(preset, dataset) -> None:
    facts = dataset_facts(dataset)
    cfg = data_config_for(get_preset(preset))
    assert cfg.img_scale == facts.pipeline.img_scale and cfg.crop_size == facts.pipeline.image_size
    assert cfg.reduce_zero_label is facts.pipeline.reduce_zero_label
    assert cfg.test_short_side == facts.pipeline.test_short_side


def test_a_user_folder_gets_the_custom_pipeline() -> None:
    cfg = data_config_for(replace(get_preset("voc12-inductive"), dataset="my_photos"))
    assert cfg.reduce_zero_label is False and cfg.img_scale == (2048, 512) and cfg.crop_size == 512
