"""Your own data: the training pipeline's sizes set with `--set data.KEY=VALUE`, `otseg check-data --dataset custom`
(classes, split, image sizes, and a warning when the default pipeline would rescale the images far), and the
pipeline settings reaching the transform and the run record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fake_layouts import make_custom

from conftest import tiny_train_args
from otseg.cli import main
from otseg.config import DataConfig
from otseg.data.check import check_dataset
from otseg.data.overrides import DATA_KEYS, TIED_TO_MODEL, apply_data_overrides, split_data_overrides
from otseg.data.transforms import TrainTransform


def test_command_line_values_become_typed_settings() -> None:
    cfg = apply_data_overrides(
        DataConfig(), {"img_scale": "64,64", "ratio_range": "0.75,1.5", "hue_delta": "5", "flip_prob": "0"}
    )
    assert cfg.img_scale == (64, 64) and cfg.ratio_range == (0.75, 1.5)
    assert cfg.hue_delta == 5 and cfg.flip_prob == 0.0 and isinstance(cfg.flip_prob, float)
    assert DataConfig().img_scale == (2048, 512)  # the default is untouched


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("img_scale", "64", "two positive integers"),
        ("img_scale", "64,0", "two positive integers"),
        ("img_scale", "64.5,64", "two positive integers"),
        ("ratio_range", "2,1", "0 < lo <= hi"),
        ("ratio_range", "abc", "0 < lo <= hi"),
        ("flip_prob", "1.5", "probability"),
        ("hue_delta", "200", "0..90"),
        ("cat_max_ratio", "0", "(0, 1]"),
    ],
)
def test_bad_values_are_one_line_naming_key_value_and_what_is_valid(key: str, value: str, says: str) -> None:
    with pytest.raises(ValueError) as err:
        apply_data_overrides(DataConfig(), {key: value})
    message = str(err.value)
    assert f"data.{key}" in message and repr(value) in message and says in message and "\n" not in message


def test_unknown_and_model_tied_keys_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"settable: .*img_scale"):
        apply_data_overrides(DataConfig(), {"img_size": "64"})
    for key in TIED_TO_MODEL:
        with pytest.raises(ValueError, match=f"data.{key} cannot be set on its own"):
            apply_data_overrides(DataConfig(), {key: "1"})
    assert not set(DATA_KEYS) & set(TIED_TO_MODEL)


def test_split_keeps_the_other_overrides() -> None:
    data, rest = split_data_overrides({"data.img_scale": "64,64", "train.lr": "1", "head.use_mps": "false"})
    assert data == {"img_scale": "64,64"} and rest == {"train.lr": "1", "head.use_mps": "false"}


def test_img_scale_sizes_the_training_rescale() -> None:
    """With the default (2048, 512) a 64-px image is zoomed to a short side of 256..1024 before the 64-px crop;
    with img_scale 64,64 and ratio 1,1 it stays 64 px, so the crop is the whole image."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = 255  # left half white
    label = np.zeros((64, 64), np.uint8)
    label[:, 32:] = 1
    sized = apply_data_overrides(DataConfig(crop_size=64, reduce_zero_label=False), {"img_scale": "64,64"})
    sized = apply_data_overrides(sized, {"ratio_range": "1,1", "flip_prob": "0"})
    _, lab = TrainTransform(sized)(image, label, rng=np.random.default_rng(0))
    assert lab is not None and (lab.numpy() == label).all()  # nothing rescaled, the crop is the image
    default = apply_data_overrides(DataConfig(crop_size=64, reduce_zero_label=False), {"flip_prob": "0"})
    _, zoomed = TrainTransform(default)(image, label, rng=np.random.default_rng(0))
    # A 64-px crop of a rescale to a short side >= 256 px covers one half of the image only.
    assert zoomed is not None and len(np.unique(zoomed.numpy())) == 1


def test_check_data_accepts_custom_and_reports_classes_split_and_sizes(tmp_path: Path, capsys) -> None:
    root = make_custom(tmp_path / "mine", size=(64, 64))
    assert main(["check-data", "--dataset", "custom", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "classes: 4; unseen: car" in out
    assert "image short side: 64 px" in out
    assert "--set data.img_scale=64,64" in out  # the default pipeline would zoom them 8x
    assert "usable" in out


def test_check_data_custom_without_warning_for_photo_sized_images(tmp_path: Path) -> None:
    root = make_custom(tmp_path / "mine", n_train=2, n_val=1, size=(400, 500))
    check = check_dataset("custom", root)
    assert check.usable and check.warnings == []
    assert any("image short side: 400 px" in note for note in check.notes)


def test_check_data_custom_reports_a_missing_classes_file_with_the_layout(tmp_path: Path, capsys) -> None:
    root = make_custom(tmp_path / "mine")
    (root / "classes.txt").unlink()
    assert main(["check-data", "--dataset", "custom", "--data-root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "NOT usable" in out and "classes.txt" in out


def test_train_uses_and_records_the_data_settings(tmp_path: Path, capsys) -> None:
    root = make_custom(tmp_path / "mine", size=(64, 64))
    wd = tmp_path / "run"
    args = [*tiny_train_args("voc12-inductive", root, wd, max_iters=1), "--dataset", "custom"]
    sets = ["--set", "data.img_scale=64,64", "--set", "data.ratio_range=0.75,1.5"]
    assert main(["train", *args, *sets]) == 0
    assert "data pipeline: img_scale 64x64, ratio 0.75-1.5, crop 64" in capsys.readouterr().out
    record = json.loads((wd / "run.json").read_text())
    assert record["data_pipeline"]["img_scale"] == [64, 64] and record["data_pipeline"]["ratio_range"] == [0.75, 1.5]
    # A bad value stops before training, in one line.
    assert main(["train", *args, "--set", "data.img_scale=64"]) == 2
    assert "data.img_scale = '64': expected two positive integers" in capsys.readouterr().err
