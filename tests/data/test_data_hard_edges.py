"""Bad training and evaluation data: every corrupt, truncated or inconsistent file ends in one line naming it.

Training runs use a tiny model (32-pixel input, 2 layers) on a fake custom dataset of 32x32 images, so each run
takes well under a second of training; DataLoader workers are exercised with num_workers=2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_layouts import make_custom, write_label
from PIL import Image, ImageFile

import tiny_training
from otseg import OTSeg
from otseg.config import TrainConfig
from otseg.data.datasets import SegmentationDataset, build_dataset, read_image, read_label
from otseg.eval.evaluate import evaluate
from otseg.train.trainer import BadSampleError, Trainer

CLASSES = ("sky", "tree", "road", "car")


def tiny_model() -> OTSeg:
    return tiny_training.tiny_model(classes=CLASSES, name="tiny-edges")


def to_tensors(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator | None = None):
    """A minimal transform: normalise, random horizontal flip (drawn from the per-sample generator)."""
    img = (image.astype(np.float32) - 128) / 64
    lab = label.astype(np.int64) if label is not None else None
    if rng is not None and rng.random() < 0.5:
        img = img[:, ::-1]
        lab = lab[:, ::-1] if lab is not None else None
    img_t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    return img_t, None if lab is None else torch.from_numpy(np.ascontiguousarray(lab))


def custom_set(root: Path, split: str = "train") -> SegmentationDataset:
    return build_dataset("custom", root, split, to_tensors)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return make_custom(tmp_path / "data", n_train=8, n_val=2, size=(32, 32), class_names=CLASSES, unseen=("car",))


def cfg(**kw) -> TrainConfig:
    base = dict(max_iters=4, global_batch=2, batch_size=2, lr=1e-3, warmup_iters=1, num_workers=0, log_interval=2,
                checkpoint_interval=2, seed=0)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def records(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_images_and_labels_name_the_file(tmp_path: Path, ext: str) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # importing otseg must not make PIL accept truncated files
    rng = np.random.default_rng(0)
    path = tmp_path / f"x.{ext}"
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
    truncate(path)
    with pytest.raises(OSError, match="truncated") as info:
        read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    label = tmp_path / "label.png"
    Image.fromarray(rng.integers(0, 4, (48, 48), dtype=np.uint8)).save(label)
    truncate(label)
    with pytest.raises(OSError, match=str(label)):
        read_label(label)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(OSError, match=str(empty)):
        read_image(empty)


# ------------------------------------------------------------------------------------------------ training: stop
def test_stop_names_the_file_and_keeps_the_last_checkpoint(data_root: Path, tmp_path: Path) -> None:
    train_set = custom_set(data_root)
    victim = train_set.samples[5][0]

    def corrupt_after_step_2(model: torch.nn.Module) -> dict:  # runs right after the step-2 checkpoint
        victim.write_bytes(b"\x89PNG garbage")
        return {}

    trainer = Trainer(tiny_model(), train_set, cfg(max_iters=8, eval_interval=2), tmp_path / "wd", corrupt_after_step_2)
    with pytest.raises(BadSampleError) as info:
        trainer.train()
    msg = str(info.value)
    assert str(victim) in msg and "--bad-samples skip" in msg and "\n" not in msg
    step = trainer.step
    assert 2 <= step < 8 and f"training stopped at step {step}" in msg
    kept = tmp_path / "wd" / f"iter_{step - step % 2}.pt"
    assert kept.name in msg
    assert torch.load(kept, weights_only=True)["step"] == step - step % 2
    assert records(tmp_path / "wd")[-1]["stopped_on_bad_sample"] == str(victim)


@pytest.mark.parametrize("problem", ["size", "label_value"])
def test_stop_in_dataloader_workers_gives_the_same_one_line_message(
    data_root: Path, tmp_path: Path, problem: str
) -> None:
    train_set = custom_set(data_root)
    lab = train_set.samples[2][1]
    assert lab is not None
    if problem == "size":
        write_label(lab, np.zeros((20, 24), np.uint8))
        expected = "size mismatch"
    else:
        bad = np.zeros((32, 32), np.uint8)
        bad[3, 3] = 7  # classes are 0..3
        write_label(lab, bad)
        expected = "contains value [7]"
    trainer = Trainer(tiny_model(), train_set, cfg(num_workers=2, max_iters=8), tmp_path / "wd")
    with pytest.raises(BadSampleError) as info:
        trainer.train()
    msg = str(info.value)
    assert expected in msg and str(lab) in msg and "\n" not in msg and "Traceback" not in msg


# ------------------------------------------------------------------------------------------------ training: skip
def test_skip_counts_warns_once_per_file_and_logs(data_root: Path, tmp_path: Path, capsys) -> None:
    train_set = custom_set(data_root)
    truncate(train_set.samples[1][0])
    bad_label = train_set.samples[6][1]
    assert bad_label is not None
    bad_label.write_bytes(b"not a png")
    wd = tmp_path / "wd"
    trainer = Trainer(tiny_model(), train_set, cfg(bad_samples="skip", num_workers=2, max_iters=8), wd)
    result = trainer.train()
    assert trainer.step == 8  # 8 steps x 2 = 16 samples of 8: each bad one was met twice and replaced
    bad_names = sorted([str(train_set.samples[1][0]), str(train_set.samples[6][0])])
    assert result["skipped_samples"] == 4 and sorted(trainer.bad_files) == bad_names
    err = capsys.readouterr().err
    assert err.count("skipping bad sample") == 2  # once per file, not once per encounter
    assert str(train_set.samples[6][1]) in err  # the message names the unreadable label, not just the sample
    logged = records(wd)
    assert sorted(r["skipped_sample"] for r in logged if "skipped_sample" in r) == bad_names
    assert logged[-1]["skipped_samples"] == 4 and logged[-1]["bad_samples"] == bad_names
    assert (wd / "iter_8.pt").is_file()


def test_skip_is_deterministic_across_worker_layouts(data_root: Path, tmp_path: Path) -> None:
    train_set = custom_set(data_root)
    truncate(train_set.samples[3][0])
    weights = []
    for workers in (0, 2):
        run_cfg = cfg(bad_samples="skip", num_workers=workers)
        trainer = Trainer(tiny_model(), train_set, run_cfg, tmp_path / f"w{workers}")
        trainer.train()
        weights.append(trainer.model.state_dict())
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name


def test_skip_stops_when_most_samples_are_bad(data_root: Path, tmp_path: Path) -> None:
    train_set = custom_set(data_root)
    for i in range(5):  # 5 of 8
        train_set.samples[i][0].write_bytes(b"")
    trainer = Trainer(tiny_model(), train_set, cfg(bad_samples="skip", max_iters=8), tmp_path / "wd")
    with pytest.raises(BadSampleError, match=r"max_bad_fraction=0\.5") as info:
        trainer.train()
    assert "\n" not in str(info.value) and "cannot read image" in str(info.value)


def test_bad_samples_setting_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'stop' or 'skip'"):
        train_set = custom_set(make_custom(tmp_path / "d", size=(32, 32)))
        Trainer(tiny_model(), train_set, cfg(bad_samples="ignore"), tmp_path)


# ------------------------------------------------------------------------------------------------ evaluation
def test_evaluation_with_a_corrupt_image_names_it(data_root: Path) -> None:
    val_set = custom_set(data_root, "val")
    truncate(val_set.samples[1][0])
    with pytest.raises(OSError) as info:
        evaluate(tiny_model(), val_set, progress=False)
    assert str(val_set.samples[1][0]) in str(info.value) and "\n" not in str(info.value)
