"""`otseg eval` ends with images per second; `evaluate(precision=...)` scores at float32 (default) or bf16."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from fake_layouts import make_custom

from otseg import OTSeg
from otseg.cli import main
from otseg.data.datasets import build_dataset
from otseg.data.facts import data_config_for
from otseg.data.transforms import TestTransform
from otseg.distributed import DistInfo
from otseg.eval.evaluate import evaluate, throughput_line
from tiny_training import tiny_model, trained_checkpoint

CLASSES = ("sky", "tree", "road", "car")
LINE = re.compile(r"^eval: 3 images in \d+\.\d s: \d+\.\d\d images/s \((float32|bf16), cpu\)$")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, OTSeg]:
    """A fake custom dataset (3 validation images) and a 2-step checkpoint of a tiny model for its classes."""
    tmp = tmp_path_factory.mktemp("eval_speed")
    root = make_custom(tmp / "data", n_train=2, n_val=3, size=(32, 40), class_names=CLASSES, unseen=("car",))
    model = tiny_model(classes=CLASSES, name="tiny-eval", dataset="custom", test_short_side=32)
    return root, trained_checkpoint(tmp / "run", model=model), model.eval()


def _eval(root: Path, ckpt: Path, out: Path, *extra: str) -> int:
    argv = ["eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--dataset", "custom", "--device", "cpu"]
    return main([*argv, "--out", str(out), *extra])


def test_eval_ends_with_images_per_second(run, tmp_path, capsys):
    root, ckpt, _ = run
    assert _eval(root, ckpt, tmp_path / "a.json") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert LINE.match(lines[-1]) and "(float32, cpu)" in lines[-1], lines[-1]
    written = json.loads((tmp_path / "a.json").read_text())
    assert written["num_images"] == 3
    assert not any("second" in key for key in written)  # timings are printed, not stored with the metrics


def test_eval_bf16_runs_and_says_so(run, tmp_path, capsys):
    root, ckpt, _ = run
    assert _eval(root, ckpt, tmp_path / "b.json", "--precision", "bf16") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert LINE.match(out[-1]) and "(bf16, cpu)" in out[-1], out[-1]
    assert json.loads((tmp_path / "b.json").read_text())["num_images"] == 3
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        _eval(root, ckpt, tmp_path / "c.json", "--precision", "fp8")


def test_evaluate_float32_default_and_bf16(run):
    root, _, model = run
    val = build_dataset("custom", root, "val", TestTransform(data_config_for(model.config)))
    default = evaluate(model, val, progress=False)
    explicit = evaluate(model, val, progress=False, precision="float32")
    assert default == explicit
    half = evaluate(model, val, progress=False, precision="bf16")
    assert half["num_images"] == 3 and set(half) == set(default)
    with pytest.raises(ValueError, match="precision 'half'"):
        evaluate(model, val, progress=False, precision="half")  # type: ignore[arg-type]


def test_throughput_line():
    assert throughput_line(10, 4.0, "bf16") == "eval: 10 images in 4.0 s: 2.50 images/s (bf16, cpu)"
    two = DistInfo(rank=0, world_size=2, device=torch.device("cpu"))
    assert (
        throughput_line(9, 3.0, "float32", two) == "eval: 9 images in 3.0 s: 3.00 images/s (float32, cpu x 2 processes)"
    )
