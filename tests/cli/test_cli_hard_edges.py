"""`otseg` on bad input, as a user meets it: `otseg COMMAND: error: MESSAGE` on one line, exit status 2,
no traceback (unless OTSEG_DEBUG=1). A few cases run the real console entry point in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_layouts import make_custom

from conftest import golden_file, tiny_set_args
from otseg.cli import main
from tiny_training import tiny_model, trained_checkpoint

CLASSES = ("sky", "tree", "road", "car")


def run_cli(*args: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OTSEG_DEBUG", None)
    if debug:
        env["OTSEG_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "otseg", *args], env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]  # besides these: tqdm's bar, if it started
    assert len(errors) == 1 and errors[0].startswith(f"otseg {command}: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory) -> tuple[Path, Path]:
    """A fake custom dataset of 32x32 images and a 2-step training checkpoint of a tiny model for its classes."""
    tmp = tmp_path_factory.mktemp("edges_cli")
    root = make_custom(tmp / "data", n_train=2, n_val=2, size=(32, 32), class_names=CLASSES, unseen=("car",))
    model = tiny_model(classes=CLASSES, name="tiny-cli", dataset="custom", test_short_side=32)
    return root, trained_checkpoint(tmp / "run", model=model)


def test_missing_checkpoint_and_debug_traceback(tmp_path: Path) -> None:
    args = ["eval", "--checkpoint", str(tmp_path / "nope.pt"), "--data-root", str(tmp_path)]
    line = assert_one_line_error(run_cli(*args), "eval")
    assert str(tmp_path / "nope.pt") in line and "does not exist" in line
    debug = run_cli(*args, debug=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "MissingFileError" in debug.stderr


def test_corrupt_image_in_eval_names_the_file(custom_run: tuple[Path, Path], tmp_path: Path) -> None:
    root, ckpt = custom_run
    args = ["eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--dataset", "custom"]
    ok = run_cli(*args, "--out", str(tmp_path / "ok.json"))  # first the intact data: the command works
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "ok.json").read_text())["num_images"] == 2
    victim = sorted((root / "val" / "images").iterdir())[1]
    good = victim.read_bytes()
    try:
        victim.write_bytes(good[: len(good) // 2])
        line = assert_one_line_error(run_cli(*args, "--out", str(tmp_path / "bad.json")), "eval")
    finally:
        victim.write_bytes(good)
    assert str(victim) in line and "truncated" in line
    assert not (tmp_path / "bad.json").exists()


def test_duplicate_class_names(tmp_path: Path) -> None:
    root = make_custom(tmp_path / "data", n_train=1, n_val=1, size=(32, 32))
    (root / "classes.txt").write_text("sky\ntree\nsky\ncar\n")
    line = assert_one_line_error(
        run_cli("eval", "--checkpoint", str(tmp_path / "x.pt"), "--data-root", str(root), "--dataset", "custom"),
        "eval",
    )
    assert "class name 'sky' appears twice" in line and "classes.txt" in line


def test_empty_class_list_and_other_classes_than_the_checkpoint(
    custom_run: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    _, ckpt = custom_run
    root = make_custom(tmp_path / "data", n_train=1, n_val=1, size=(32, 32), class_names=("a", "b"), unseen=None)
    argv = ["eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--dataset", "custom"]
    assert main([*argv, "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    # The checkpoint's embeddings are for sky/tree/road/car: never used for a 2-class dataset.
    assert "no class text embeddings" in err and "--clip" in err and not (tmp_path / "r.json").exists()
    (root / "classes.txt").write_text("\n  \n")
    assert main(argv) == 2
    assert "lists no class names" in capsys.readouterr().err


def test_pickled_checkpoint_points_to_allow_pickle(custom_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    root, ckpt = custom_run
    pickled = tmp_path / "pickled.pt"
    torch.save({**torch.load(ckpt, weights_only=True), "note": Path("x")}, pickled)  # a pickled Python object
    argv = ["eval", "--checkpoint", str(pickled), "--data-root", str(root), "--dataset", "custom"]
    assert main([*argv, "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("otseg eval: error: ") and str(pickled) in err and "--allow-pickle" in err
    assert err.count("\n") == 1
    assert main([*argv, "--out", str(tmp_path / "r.json"), "--allow-pickle"]) == 0


# ------------------------------------------------------------------------------------------------ train --bad-samples
def test_train_bad_samples_flag(tmp_path: Path, capsys) -> None:
    clip = str(golden_file("openai_clip_jit.pt"))
    root = make_custom(tmp_path / "data", n_train=4, n_val=1, class_names=CLASSES, unseen=("car",))
    victim = sorted((root / "train" / "labels").iterdir())[0]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n broken")

    def train(work: str, *extra: str) -> int:
        sets = tiny_set_args(vision__heads=1, train__warmup_iters=1, train__log_interval=1)
        return main([
            "train", "--preset", "voc12-inductive", "--dataset", "custom", "--data-root", str(root),
            "--work-dir", str(tmp_path / work), "--clip", clip, "--max-iters", "3", "--batch-size", "2",
            "--num-workers", "0", *sets, *extra,
        ])  # fmt: skip

    assert train("stop") == 2
    err = capsys.readouterr().err
    assert "otseg train: error: training stopped at step " in err and str(victim) in err
    assert "--bad-samples skip" in err and "Traceback" not in err
    assert train("skip", "--bad-samples", "skip") == 0
    err = capsys.readouterr().err
    assert err.count("skipping bad sample") == 1 and str(victim) in err
    records = [json.loads(ln) for ln in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    summary = [r for r in records if "skipped_samples" in r]
    assert len(summary) == 1 and summary[0]["skipped_samples"] >= 1 and len(summary[0]["bad_samples"]) == 1
    assert (tmp_path / "skip" / "iter_3.pt").is_file()
