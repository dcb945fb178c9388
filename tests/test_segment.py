"""`otseg segment` (src/otseg/segment.py) with careless input: an image called summary.png, --out equal to (or
inside) the input folder, class lists in another syntax or a missing file, a single class, a preset typo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_model
from otseg.cli import main
from otseg.model_files.otseg_folder import save_pretrained
from otseg.predictor import Predictor


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny-model")
    save_pretrained(make_tiny_model(seed=1), d)
    return d


def _png(path: Path, height: int = 48, width: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _segment(model_dir: Path, *args: str) -> int:
    return main(["segment", *args, "--checkpoint", str(model_dir), "--no-progress"])


def test_an_image_called_summary_keeps_its_outputs_and_the_summary(model_dir: Path, tmp_path: Path) -> None:
    _png(tmp_path / "in" / "summary.png")
    _png(tmp_path / "in" / "cat.png")
    out = tmp_path / "out"
    assert _segment(model_dir, str(tmp_path / "in"), "--classes", "cat, sofa", "--out", str(out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(r["json"] for r in summary["images"]) == ["cat.json", "summary_2.json"]
    record = json.loads((out / "summary_2.json").read_text())
    assert record["image"].endswith("summary.png") and record["labels"] == "summary_2_labels.png"


def test_out_equal_to_the_input_folder_does_not_segment_its_own_outputs(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    _png(folder / "a.png")
    _png(folder / "b.png")
    for run in range(2):
        assert _segment(model_dir, str(folder), "--classes", "cat, sofa", "--out", str(folder)) == 0
        summary = json.loads((folder / "summary.json").read_text())
        assert sorted(Path(r["image"]).name for r in summary["images"]) == ["a.png", "b.png"], run
    assert "skipped 4 label map(s) and overlay(s)" in capsys.readouterr().out
    assert sorted(p.name for p in folder.glob("*.png")) == [
        "a.png", "a_labels.png", "a_overlay.png", "b.png", "b_labels.png", "b_overlay.png",
    ]  # fmt: skip
    # --out inside the input folder (found again by the recursive search): the same.
    assert _segment(model_dir, str(folder), "--classes", "cat, sofa", "--out", str(folder / "seg")) == 0
    assert _segment(model_dir, str(folder), "--classes", "cat, sofa", "--out", str(folder / "seg")) == 0
    summary = json.loads((folder / "seg" / "summary.json").read_text())
    assert sorted(Path(r["image"]).name for r in summary["images"]) == ["a.png", "b.png"]


def test_only_earlier_outputs_is_one_line(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "photos"
    _png(folder / "a.png")
    assert _segment(model_dir, str(folder), "--classes", "cat, sofa", "--out", str(tmp_path / "out")) == 0
    capsys.readouterr()
    outputs = [str(tmp_path / "out" / "a_labels.png"), str(tmp_path / "out" / "a_overlay.png")]
    assert _segment(model_dir, *outputs, "--classes", "cat, sofa", "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "outputs of an earlier otseg segment" in err


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        ("a; b; c", "separates names with ';'"),
        ('["a","b"]', "looks like a list literal"),
        ("names.txt", "names.txt: no such file"),
    ],
)
def test_careless_class_lists_are_one_line(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], classes: str, expected: str
) -> None:
    _png(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    assert _segment(model_dir, str(tmp_path / "in"), "--classes", classes, "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("otseg segment: error: --classes") and expected in err
    assert not out.exists()


def test_a_single_class_gets_a_note(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _png(tmp_path / "in" / "a.png")
    assert _segment(model_dir, str(tmp_path / "in"), "--classes", "cat", "--out", str(tmp_path / "out")) == 0
    printed = capsys.readouterr().out
    assert printed.count("note: only one class ('cat')") == 1 and "background" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["images"][0]["fractions"] == {"cat": 1.0} and "100 %" in summary["class_list_note"]


def test_a_preset_typo_is_refused_everywhere(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(KeyError, match="unknown preset 'voc12-inductiv'; valid presets: voc12-inductive"):
        Predictor.from_pretrained(model_dir, preset="voc12-inductiv")
    for argv in (
        ["classes", "--preset", "voc12-inductiv"],
        ["classes", "--model", "demo", "--preset", "voc12-inductiv"],
        ["eval", "--checkpoint", str(model_dir), "--preset", "voc12-inductiv", "--data-root", str(tmp_path)],
        ["segment", str(tmp_path), "--checkpoint", str(model_dir), "--preset", "voc12-inductiv"],
        ["segment", str(tmp_path), "--model", "demo", "--preset", "voc12-inductiv"],  # was ignored without a checkpoint
        ["export", "--onnx", str(tmp_path / "m.onnx"), "--preset", "voc12-inductiv"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "unknown preset 'voc12-inductiv'; valid presets:" in err, argv
        assert "context59-inductive" in err and "no model" not in err
    assert main(["export", "--onnx", str(tmp_path / "m.onnx"), "--preset", "voc12-inductive"]) == 2
    assert "--preset voc12-inductive goes with --checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_running_out_of_memory_is_not_called_unreadable(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _png(tmp_path / "in" / "a.png")

    def no_memory(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise MemoryError()

    monkeypatch.setattr(Predictor, "predict", no_memory)
    assert _segment(model_dir, str(tmp_path / "in"), "--classes", "cat, sofa", "--out", str(tmp_path / "out")) == 1
    captured = capsys.readouterr()
    assert "not enough memory to segment" in captured.out and "1 image(s) not segmented" in captured.err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["failed"][0]["error"].startswith("not enough memory to segment")


def test_an_overlay_that_does_not_fit_in_memory_skips_the_image(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the pixel cap an image can be segmented and its overlay still not fit: that image is skipped, named, with
    no traceback (it was a MemoryError traceback) and no half-written pictures."""
    from otseg import predictor as predictor_module

    _png(tmp_path / "in" / "a.png")

    def no_memory(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(predictor_module.Prediction, "overlay", no_memory)
    assert _segment(model_dir, str(tmp_path / "in"), "--classes", "cat,dog", "--out", str(tmp_path / "out")) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "not enough memory to segment" in captured.out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [Path(f["image"]).name for f in summary["failed"]] == ["a.png"] and summary["images"] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.json"]
