"""`Predictor(precision=...)` and `otseg segment --precision`: float32 by default, unchanged; bf16 on request."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_tiny_model
from otseg import Predictor
from otseg.cli import main
from otseg.model import precision as precision_module
from otseg.model_files.otseg_folder import save_pretrained


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


def _picture() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)


def test_predictor_default_is_float32_and_unchanged(model):
    predictor = Predictor(model)
    assert predictor.precision == "float32"
    result = predictor.predict(_picture())
    expected = model.predict_scores(predictor.preprocess(_picture()))
    assert torch.equal(result.low_res_scores, expected[0])
    assert "precision" not in repr(predictor)


def test_predictor_bf16(model, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note where bf16 has hardware
        predictor = Predictor(model, precision="bf16")
    assert predictor.precision == "bf16" and "precision='bf16'" in repr(predictor)
    result = predictor.predict(_picture())
    expected = model.predict_scores(predictor.preprocess(_picture()), precision="bf16")
    assert torch.equal(result.low_res_scores, expected[0])
    assert result.scores.dtype == np.float32


def test_predictor_warns_about_bf16_without_bf16_units(model, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no bfloat16 units"):
        Predictor(model, precision="bf16")


def test_predictor_rejects_a_bad_precision_before_loading(model, tmp_path):
    with pytest.raises(ValueError, match="precision 'float16'"):
        Predictor(model, precision="float16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision 'x'"):  # before the (missing) file is looked at
        Predictor.from_pretrained(tmp_path / "missing.pt", precision="x")  # type: ignore[arg-type]


def test_segment_cli_bf16(model, tmp_path, capsys, monkeypatch):
    save_pretrained(model, tmp_path / "model")
    Image.fromarray(_picture()).save(tmp_path / "a.png")
    outputs = {}
    for precision in ("float32", "bf16"):
        monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)  # the note, on any CPU
        out = tmp_path / precision
        argv = ["segment", str(tmp_path / "a.png"), "--checkpoint", str(tmp_path / "model"), "--out", str(out)]
        assert main([*argv, "--no-progress", "--precision", precision]) == 0
        err = capsys.readouterr().err
        notes = [line for line in err.splitlines() if "note: precision bf16" in line]
        assert len(notes) == (precision == "bf16"), err
        if notes:
            assert notes[0].startswith("otseg segment: note: precision bf16: this CPU has no bfloat16 units")
        outputs[precision] = json.loads((out / "a.json").read_text())
    assert outputs["float32"].keys() == outputs["bf16"].keys()
