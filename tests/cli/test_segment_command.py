"""`otseg segment` and `otseg classes` from the command line, on a saved tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_model
from otseg.cli import main
from otseg.demo.world import CLASS_NAMES
from otseg.model_files.otseg_folder import save_pretrained
from otseg.segment import output_stems, parse_class_list


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-model")
    save_pretrained(make_tiny_model(seed=1), d)
    return d


def _write_images(folder, count=2):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 70, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


def test_segment_writes_maps_overlays_and_fractions(model_dir, tmp_path, capsys):
    _write_images(tmp_path / "in")
    (tmp_path / "in" / "bad.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "out"
    code = main(["segment", str(tmp_path / "in"), "--classes", "cat, sofa,wall", "--checkpoint", str(model_dir),
                 "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 1  # one unreadable image: reported, the others written
    err = capsys.readouterr()
    assert "bad.jpg" in err.out + err.err
    summary = json.loads((out / "summary.json").read_text())
    assert [f["image"].endswith("bad.jpg") for f in summary["failed"]] == [True]
    assert len(summary["images"]) == 2
    for i, height in enumerate((48, 56)):
        labels = Image.open(out / f"img{i}_labels.png")
        assert labels.mode == "P" and labels.size == (70, height)
        assert set(np.unique(np.asarray(labels))) <= {0, 1, 2}
        overlay = Image.open(out / f"img{i}_overlay.png")
        assert overlay.mode == "RGB" and overlay.width > overlay.height
        record = json.loads((out / f"img{i}.json").read_text())
        assert record["class_names"] == ["cat", "sofa", "wall"]
        assert abs(sum(record["fractions"].values()) - 1) < 1e-4
        counts = np.bincount(np.asarray(labels).ravel(), minlength=3) / labels.width / labels.height
        assert np.allclose(counts, [record["fractions"][n] for n in ("cat", "sofa", "wall")], atol=1e-5)


def test_segment_without_classes_uses_the_models_own(model_dir, tmp_path, capsys):
    _write_images(tmp_path / "in", count=1)
    assert main(["segment", str(tmp_path / "in" / "img0.png"), "--checkpoint", str(model_dir),
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0  # fmt: skip
    record = json.loads((tmp_path / "out" / "img0.json").read_text())
    assert record["class_names"] == ["aeroplane", "bicycle", "bird", "boat", "bottle"]
    capsys.readouterr()
    assert main(["classes", "--model", str(model_dir)]) == 0
    assert capsys.readouterr().out.split("\n")[:5] == record["class_names"]


def test_classes_of_the_demo_model_and_a_preset(capsys):
    assert main(["classes", "--model", "demo"]) == 0
    assert capsys.readouterr().out.strip().split("\n") == list(CLASS_NAMES)
    assert main(["classes", "--model", "voc12-inductive"]) == 0
    printed = capsys.readouterr().out.strip().split("\n")
    assert len(printed) == 20 and printed[0] == "aeroplane"


def test_segment_bad_input_is_a_message_not_a_traceback(model_dir, tmp_path, capsys):
    _write_images(tmp_path / "in", count=1)
    code = main(["segment", str(tmp_path / "in"), "--classes", "cat,,sofa", "--checkpoint", str(model_dir),
                 "--out", str(tmp_path / "o"), "--no-progress"])  # fmt: skip
    assert code == 2 and "empty name" in capsys.readouterr().err
    code = main(["segment", str(tmp_path / "nowhere"), "--checkpoint", str(model_dir), "--no-progress"])
    assert code == 2 and "nowhere" in capsys.readouterr().err
    code = main(["segment", str(tmp_path / "in"), "--checkpoint", str(tmp_path / "no-model"), "--no-progress"])
    assert code == 2 and "no-model" in capsys.readouterr().err


def test_helpers():
    assert parse_class_list(" cat , big sofa,wall") == ["cat", "big sofa", "wall"]

    stems = output_stems([Path("a/x.png"), Path("b/x.jpg"), Path("b/y.png")])
    assert stems == ["a_x", "b_x", "y"]


def test_segment_says_once_when_class_words_are_unknown_to_the_model(tmp_path, capsys):
    """A model that declares its vocabulary (the demo model does, in config.json): names with other words are
    noted once, before the images, and in summary.json."""
    d = tmp_path / "small-world-model"
    save_pretrained(make_tiny_model(seed=1), d, extra={"vocabulary": ["red", "blue", "striped", "dotted"]})
    _write_images(tmp_path / "in", count=3)
    code = main(["segment", str(tmp_path / "in"), "--classes", "red striped,blue cat", "--checkpoint", str(d),
                 "--out", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("'cat' is new to it") == 1 and "blue, dotted, red, striped" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "'cat' is new to it" in summary["note"]
    capsys.readouterr()
    main(["segment", str(tmp_path / "in"), "--classes", "red striped,blue dotted", "--checkpoint", str(d),
          "--out", str(tmp_path / "out2"), "--no-progress"])  # fmt: skip
    assert "new to it" not in capsys.readouterr().out


def test_segment_sample_tries_the_built_in_picture(tmp_path, capsys):
    """`otseg segment --sample`: the picture shipped with the demo model, with its own class names."""
    out = tmp_path / "out"
    assert main(["segment", "--sample", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(i["image"]).name for i in summary["images"]] == ["demo.png"]
    fractions = json.loads((out / "demo.json").read_text())
    assert set(fractions["fractions"]) == {"blue striped", "green checkered", "yellow striped"}
    assert main(["segment", "--out", str(out)]) == 2  # neither images nor --sample: one line
    assert "--sample" in capsys.readouterr().err
