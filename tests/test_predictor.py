"""Predictor: any image input (path, PIL, array; EXIF, grayscale, RGBA, 16-bit; any size), any class names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import otseg.model.text as text_module
import otseg.predictor as predictor_module
from conftest import TINY_SEGMENTOR, golden_file, load_golden, make_tiny_model
from otseg import Predictor
from otseg.data.facts import data_config_for
from otseg.data.transforms import TestTransform
from otseg.image_io import read_image
from otseg.model_files.otseg_folder import save_pretrained


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(make_tiny_model())


def _picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (200, 40, 40)
    img[h // 2 :] = (30, 60, 210)
    return np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)


def test_predict_any_size_returns_maps_at_input_size(predictor):
    image = _picture(90, 150)  # not square, larger than the 64 px crop: resized and slid over
    result = predictor.predict(image, ["cat", "sofa", "wall"])
    assert result.labels.shape == (90, 150) and result.labels.dtype == np.int64
    assert result.scores.shape == (3, 90, 150) and result.scores.dtype == np.float32
    assert result.class_names == ["cat", "sofa", "wall"]
    assert set(np.unique(result.labels)) <= {0, 1, 2}
    np.testing.assert_array_equal(result.labels, result.scores.argmax(0))
    fractions = result.fractions()
    assert list(fractions) == ["cat", "sofa", "wall"] and abs(sum(fractions.values()) - 1) < 1e-9


def test_path_pil_and_array_give_the_same_result(predictor, tmp_path):
    image = _picture(70, 80, seed=1)
    Image.fromarray(image).save(tmp_path / "x.png")
    names = ["red thing", "blue thing"]
    a = predictor.predict(image, names)
    b = predictor.predict(tmp_path / "x.png", names)
    c = predictor.predict(Image.fromarray(image), names)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.scores, c.scores)


def test_exif_orientation_is_applied(predictor, tmp_path):
    image = _picture(60, 100, seed=2)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a portrait phone photo stored landscape
    Image.fromarray(image).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    upright = read_image(tmp_path / "phone.jpg")
    assert upright.shape == (100, 60, 3)
    result = predictor.predict(tmp_path / "phone.jpg", ["a", "b"])
    assert result.labels.shape == (100, 60)


def test_grayscale_rgba_and_16_bit_inputs(predictor, tmp_path):
    gray = _picture(64, 64, seed=3)[..., 0]
    rgb_of_gray = np.repeat(gray[..., None], 3, axis=2)
    names = ["light", "dark"]
    ref = predictor.predict(rgb_of_gray, names)
    np.testing.assert_array_equal(predictor.predict(gray, names).scores, ref.scores)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    np.testing.assert_array_equal(predictor.predict(tmp_path / "gray.png", names).scores, ref.scores)

    # 16-bit: v * 257 spans the same range as v in 8 bits, so it must give the same result.
    sixteen = gray.astype(np.uint16) * 257
    np.testing.assert_array_equal(predictor.predict(sixteen, names).scores, ref.scores)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")  # an I;16 PNG
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    np.testing.assert_array_equal(predictor.predict(tmp_path / "deep.png", names).scores, ref.scores)

    rgba = np.concatenate([rgb_of_gray, np.full((64, 64, 1), 77, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(predictor.predict(tmp_path / "alpha.png", names).scores, ref.scores)
    np.testing.assert_array_equal(predictor.predict(rgba.astype(np.float32) / 255.0, names).labels, ref.labels)


def test_text_embeddings_are_cached_across_calls(monkeypatch):
    predictor = Predictor(make_tiny_model())
    calls = []
    real = text_module.compute_class_embeddings

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "compute_class_embeddings", counting)
    image = _picture(64, 64)
    first = predictor.predict(image, ["cat", "dog"])
    predictor.predict(image, ["sky"])
    again = predictor.predict(image, ["cat", "dog"])
    assert calls == [["cat", "dog"], ["sky"]]
    np.testing.assert_array_equal(first.scores, again.scores)
    # The model's own classes never need the text tower.
    own = predictor.predict(image)
    assert own.class_names == predictor.default_class_names and len(calls) == 2


def test_bad_inputs_give_clear_errors(predictor, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ValueError, match=r"broken\.png"):
        predictor.predict(tmp_path / "broken.png", ["a"])
    good = tmp_path / "good.png"
    Image.fromarray(_picture(64, 64)).save(good)
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.png"):
        predictor.predict(tmp_path / "cut.png", ["a"])
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        predictor.predict(tmp_path / "missing.png", ["a"])
    with pytest.raises(ValueError, match=r"duplicate|twice|repeated"):
        predictor.predict(_picture(64, 64), ["cat", "cat"])
    with pytest.raises(ValueError):
        predictor.predict(_picture(64, 64), ["cat", " "])
    with pytest.raises(ValueError, match="shape"):
        predictor.predict(np.zeros((3, 64, 64), np.uint8), ["cat"])
    with pytest.raises(ValueError, match="NaN"):
        predictor.predict(np.full((8, 8, 3), np.nan, np.float32), ["cat"])


def test_model_without_text_tower_keeps_its_own_classes():
    model = make_tiny_model()
    model.text_encoder = None
    predictor = Predictor(model)
    assert predictor.predict(_picture(64, 64)).class_names == list(model.config.class_names)
    with pytest.raises(ValueError, match=r"--clip|clip="):
        predictor.predict(_picture(64, 64), ["cat"])


def test_from_pretrained_folder_matches_the_model(tmp_path):
    model = make_tiny_model(seed=4)
    save_pretrained(model, tmp_path / "m")
    loaded = Predictor.from_pretrained(tmp_path / "m")
    image = _picture(80, 64, seed=5)
    expected = Predictor(model).predict(image, ["cat", "sofa"])
    got = loaded.predict(image, ["cat", "sofa"])
    torch.testing.assert_close(torch.from_numpy(got.scores), torch.from_numpy(expected.scores))
    assert loaded.default_class_names == list(model.config.class_names)


def test_outputs_render(predictor):
    result = predictor.predict(_picture(40, 50), ["cat", "sofa", "wall"])
    label_img = result.label_image()
    assert label_img.mode == "P" and label_img.size == (50, 40)
    np.testing.assert_array_equal(np.asarray(label_img), result.labels)
    over = result.overlay()
    assert over.mode == "RGB" and over.height >= 128 and over.width > over.height  # enlarged, legend at the right


def test_from_a_reference_checkpoint_with_clip_weights(tmp_path):
    """A reference release .pth (no text tower inside) + OpenAI CLIP weights for the text tower."""

    seg, backbone = load_golden("segmentor.pt"), load_golden("backbone.pt")
    ref_sd = {**{"backbone." + k: v for k, v in backbone["state_dict"].items()}, **seg["state_dict"]}
    ckpt = tmp_path / "voc_inductive.pth"
    torch.save({"meta": {"CLASSES": ("a", "b")}, "state_dict": ref_sd}, ckpt)
    tiny = dict(TINY_SEGMENTOR)  # the voc12-inductive preset at the golden tiny segmentor's sizes
    predictor = Predictor.from_pretrained(
        ckpt, preset="voc12-inductive", clip=golden_file("openai_clip_jit.pt"), overrides=tiny
    )
    # The trained backbone comes from the .pth; the CLIP file only adds the text tower.
    got = predictor.model.backbone.state_dict()
    for key in ("prompt_embeddings", "conv1.weight", "transformer.resblocks.0.attn.in_proj_weight"):
        assert torch.equal(got[key], backbone["state_dict"][key]), key
    assert predictor.model.text_encoder is not None
    result = predictor.predict(_picture(50, 90), ["cat", "sofa", "wall"])
    assert result.labels.shape == (50, 90) and result.scores.shape == (3, 50, 90)
    assert predictor.default_class_names[0] == "aeroplane" and len(predictor.default_class_names) == 20

    with pytest.raises(ValueError, match="preset"):
        Predictor.from_pretrained(ckpt)


def test_predictor_and_evaluation_prepare_an_image_identically() -> None:
    """One test pipeline: the Predictor's input tensor is the evaluation's (`TestTransform`), bit for bit."""

    model = make_tiny_model()
    image = _picture(37, 53)
    expected, _ = TestTransform(data_config_for(model.config))(image)
    got = Predictor(model).preprocess(image)
    assert got.shape == (1, *expected.shape)
    assert torch.equal(got[0], expected)
