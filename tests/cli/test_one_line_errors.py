"""Every failure found so far ends in one line naming the file and the value, exit != 0, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_layouts import make_custom, make_voc
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import make_tiny_model, tiny_train_args
from otseg.cli import main
from otseg.data.datasets import read_custom_classes
from otseg.formats.state_dict import tensor_digest
from otseg.model_files.otseg_folder import save_pretrained

REPO = Path(__file__).resolve().parents[2]


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("\r", "train:", "custom dataset"))]
    assert code not in (0, None), err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("key", ["stride", "test_short_side", "crop_size"])
def test_zero_sizes_are_refused(capsys, key: str) -> None:
    _one_line_error(capsys, ["params", "--set", f"{key}=0"], f"{key} = 0", "positive")


def test_typos_in_choices_name_the_valid_ones(capsys) -> None:
    line = _one_line_error(capsys, ["params", "--set", "head.map_combination=gate"], "head.map_combination", "'gate'")
    assert "'gated'" in line and "'last'" in line


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return save_pretrained(make_tiny_model(), tmp_path / "model")


def _edit_config(folder: Path, **changes) -> None:
    meta = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if key == "class_names":
            meta["class_names"] = value
        else:
            meta["config"][key] = value
    (folder / "config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"crop_size": "big"}, ["crop_size = 'big'", "an integer"]),
        ({"head": {"embed_dim": 1.5}}, ["head.embed_dim = 1.5"]),
        ({"unseen_classes": [0, 99]}, ["unseen_classes", "99"]),
        ({"class_names": [None, "b", "c"]}, ["class_names", "None"]),
    ],
)
def test_bad_config_json_names_file_and_value(folder: Path, tmp_path: Path, capsys, changes, needles) -> None:
    _edit_config(folder, **changes)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    _one_line_error(capsys, ["segment", str(image), "--checkpoint", str(folder), "--no-progress"],
                    "config.json", *needles)  # fmt: skip


def test_wrong_length_seen_mask_is_named(folder: Path, tmp_path: Path, capsys) -> None:
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    with safe_open(str(weights), framework="pt") as f:
        header = dict(f.metadata())
    tensors["seen_mask"] = torch.ones(7, dtype=torch.uint8)
    header["otseg_sha256"] = tensor_digest(tensors)  # a consistent edit: only the length is wrong
    save_file(tensors, str(weights), metadata=header)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    _one_line_error(capsys, ["segment", str(image), "--checkpoint", str(folder), "--no-progress"],
                    "model.safetensors", "seen_mask has shape (7,)")  # fmt: skip


def test_class_files_latin1_bom_split_and_all_unseen(tmp_path: Path, capsys) -> None:
    root = make_custom(tmp_path / "data", n_train=2, n_val=1)
    work = tmp_path / "work"
    argv = ["train", *tiny_train_args("voc12-inductive", root, work, max_iters=1), "--dataset", "custom"]
    (root / "classes.txt").write_bytes("ciel\nv\xe9lo\narbre\nroute\n".encode("latin-1"))
    _one_line_error(capsys, argv, "classes.txt", "not UTF-8", "0xe9")
    (root / "classes.txt").write_bytes("\ufeffsky\ntree\nroad\ncar\n".encode())
    assert read_custom_classes(root).class_names == ("sky", "tree", "road", "car")  # the BOM is not in "sky"
    (root / "split.json").write_text('{"unseen": ["car",]}')
    _one_line_error(capsys, argv, "split.json", "not valid JSON")
    (root / "split.json").write_text(json.dumps({"unseen": ["sky", "tree", "road", "car"]}))
    _one_line_error(capsys, argv, "split.json", "all 4 classes unseen")
    assert not work.exists()


def test_embeddings_rows_not_matching_the_classes_stop_before_training(tmp_path: Path, capsys) -> None:
    root = make_voc(tmp_path / "data", n_train=2, n_val=1, n_aug=2)
    emb = tmp_path / "emb.npy"
    np.save(emb, np.random.default_rng(0).standard_normal((7, 6, 32)).astype(np.float32))
    work = tmp_path / "work"
    start = time.perf_counter()
    _one_line_error(capsys, ["train", *tiny_train_args("voc12-inductive", root, work, max_iters=50), "--embeddings",
                             str(emb)], "emb.npy", "7 rows", "20 classes")  # fmt: skip
    assert time.perf_counter() - start < 60
    assert not work.exists()


def test_over_long_class_name_is_one_short_line(tmp_path: Path, capsys, folder: Path) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    line = _one_line_error(capsys, ["segment", str(image), "--classes", "cat," + "a" * 8000, "--checkpoint",
                                    str(folder), "--no-progress"], "8000 characters", "at most 200")  # fmt: skip
    assert len(line) < 300


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
from otseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits")
def test_full_disk_during_checkpoint_write_is_one_line(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "data", n_train=2, n_val=1, n_aug=2)
    work = tmp_path / "work"
    args = tiny_train_args("voc12-inductive", root, work, max_iters=2)
    out = subprocess.run([sys.executable, "-c", FULL_DISK, "train", *args, "--set", "train.checkpoint_interval=1"],
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(REPO / "src"),
                         "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})  # fmt: skip
    lines = [ln for ln in out.stderr.replace("\r", "\n").splitlines() if ln.startswith("otseg train: error")]
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "enforce fail" not in out.stderr
    assert len(lines) == 1 and "iter_1.pt" in lines[0] and "MB free" in lines[0], out.stderr[-2000:]
    assert not list(work.glob("iter_*.pt")) and not list(work.glob(".iter_*"))  # no half-written checkpoint


def test_corrupt_validation_image_is_skipped_under_bad_samples_skip(tmp_path: Path, capsys) -> None:
    root = make_voc(tmp_path / "data", n_train=2, n_val=2, n_aug=2)
    val_stem = (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").read_text().split()[0]
    (root / f"VOCdevkit/VOC2012/JPEGImages/{val_stem}.jpg").write_bytes(b"not a jpeg")
    work = tmp_path / "work"
    code = main(["train", *tiny_train_args("voc12-inductive", root, work, max_iters=2), "--bad-samples", "skip"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((work / "eval.json").read_text())
    assert result["num_images"] == 1 and val_stem in result["skipped"][0]
