"""Checkpoints under bad conditions: a process killed mid-write, pickled or truncated files, mismatched models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from otseg.model_files.open_model import load_model
from otseg.model_files.otseg_folder import load_pretrained, save_pretrained
from otseg.train.trainer import Trainer, find_latest_checkpoint
from tiny_training import CLASSES, Blocks, tiny_model, train_cfg, trained_checkpoint

# ------------------------------------------------------------------------------------------------ killed mid-write
CHILD = r"""
import io, os, sys, time
from pathlib import Path
import torch
sys.path.insert(0, {tests!r})
from tiny_training import Blocks, tiny_model, train_cfg
from otseg.train.trainer import Trainer

real_save = torch.save

def slow_save(obj, f, *args, **kwargs):
    if "iter_4" not in str(f):
        return real_save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    with open(f, "wb") as fh:  # half of the checkpoint reaches the temp file, then the process "hangs"
        fh.write(data[: len(data) // 2])
        fh.flush()
        os.fsync(fh.fileno())
    Path({marker!r}).write_text(str(f))
    time.sleep(120)

torch.save = slow_save  # otseg.utils.atomic_torch_save calls torch.save: the real checkpoint code path
Trainer(tiny_model(), Blocks(), train_cfg(), {work_dir!r}).train()
"""


def test_kill_during_checkpoint_write_keeps_the_previous_one_and_resume_works(tmp_path: Path) -> None:
    wd, marker = tmp_path / "run", tmp_path / "writing"
    script = CHILD.format(tests=str(Path(__file__).resolve().parents[1]), marker=str(marker), work_dir=str(wd))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    assert child.stderr is not None  # stderr=PIPE
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, f"the child ended before writing iter_4.pt: {child.stderr.read()}"
            assert time.monotonic() < deadline, "the child never reached the step-4 checkpoint"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    partial = Path(marker.read_text())
    assert partial.is_file() and partial.name.startswith(".iter_4.pt.")  # the half-written temp file is there ...
    assert not (wd / "iter_4.pt").exists()  # ... but never under the checkpoint's name
    assert find_latest_checkpoint(wd) == wd / "iter_2.pt"
    assert (wd / "last_checkpoint").read_text().strip() == "iter_2.pt"
    previous = torch.load(wd / "iter_2.pt", weights_only=True)  # intact, and loadable without pickle
    assert previous["step"] == 2 and previous["format"] == "otseg-train"

    resumed = Trainer(tiny_model(), Blocks(), train_cfg(), wd)
    resumed.train(resume="auto")
    assert resumed.step == 4 and not partial.exists()  # the stale temp file is cleaned up
    full = Trainer(tiny_model(), Blocks(), train_cfg(), tmp_path / "uninterrupted")
    full.train()
    a, b = full.model.state_dict(), torch.load(wd / "iter_4.pt", weights_only=True)["model"]
    for name, value in b.items():  # resuming from step 2 ends where a full run does (up to the child's
        # float reduction order: it ran with one thread)
        torch.testing.assert_close(value, a[name], rtol=1e-5, atol=1e-7, msg=name)


def test_resume_auto_falls_back_when_the_newest_file_is_truncated(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    wd = tmp_path / "run"
    Trainer(tiny_model(), Blocks(), train_cfg(max_iters=4, keep_checkpoints=3), wd).train()
    newest = wd / "iter_4.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])  # e.g. a half-finished copy from another machine
    trainer = Trainer(tiny_model(), Blocks(), train_cfg(max_iters=4), wd)
    loaded: list[str] = []
    monkeypatch.setattr(trainer, "load_checkpoint", _spy(trainer.load_checkpoint, loaded))
    trainer.train(resume="auto")
    assert loaded == ["iter_4.pt", "iter_2.pt"] and trainer.step == 4
    err = capsys.readouterr().err
    assert "iter_4.pt" in err and "truncated" in err and "resuming from the previous checkpoint iter_2.pt" in err
    assert torch.load(newest, weights_only=True)["step"] == 4  # rewritten whole


def _spy(fn: Callable[..., None], calls: list[str]) -> Callable[..., None]:
    """`fn`, recording the file name of each path it is called with in `calls`."""

    def wrapper(path: str | os.PathLike, *args: object, **kwargs: object) -> None:
        calls.append(Path(path).name)
        return fn(path, *args, **kwargs)

    return wrapper


# ------------------------------------------------------------------------------------------------ weights_only
class Opaque:
    """Pickled by reference: weights_only loading refuses it."""


def test_pickle_bearing_files_get_a_clear_message(tmp_path: Path) -> None:
    ckpt = trained_checkpoint(tmp_path / "run")
    state = torch.load(ckpt, weights_only=True)
    pickled = tmp_path / "pickled.pt"
    torch.save({**state, "extra": Opaque()}, pickled)
    with pytest.raises(ValueError, match="--allow-pickle") as info:
        load_model(pickled)
    msg = str(info.value)
    assert str(pickled) in msg and "Opaque" in msg and "weights_only=True" in msg and "\n" not in msg
    assert load_model(pickled, allow_pickle=True).num_classes == 4  # the user's explicit opt-in still works
    trainer = Trainer(tiny_model(), Blocks(), train_cfg(), tmp_path / "other")
    with pytest.raises(ValueError, match="not one of them") as info:
        trainer.load_checkpoint(pickled)
    assert str(pickled) in str(info.value)


def test_truncated_checkpoint_is_named_in_one_line(tmp_path: Path) -> None:
    ckpt = trained_checkpoint(tmp_path / "run")
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    for load in (load_model, Trainer(tiny_model(), Blocks(), train_cfg(), tmp_path / "x").load_checkpoint):
        with pytest.raises(ValueError, match="truncated") as info:
            load(ckpt)
        assert str(ckpt) in str(info.value) and "\n" not in str(info.value)


def test_a_file_of_another_kind_is_not_called_pickled(tmp_path: Path) -> None:
    """A PNG given as a checkpoint is not a pickle of objects: no advice to allow pickle, which could not help."""
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(image)
    with pytest.raises(ValueError, match="not a PyTorch file") as info:
        load_model(image)
    assert str(image) in str(info.value) and "allow-pickle" not in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ mismatches
def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path: Path) -> None:
    ckpt = trained_checkpoint(tmp_path / "run")
    state = torch.load(ckpt, weights_only=True)
    key = "head.q_proj.weight"
    cases = {
        "missing": {k: v for k, v in state["model"].items() if k != key},
        "unexpected": {**state["model"], "head.extra.weight": torch.zeros(2)},
        "shape": {**state["model"], key: torch.zeros(3, 3)},
        "a-list": list(state["model"].values()),
        "int-names": {i: v for i, v in enumerate(state["model"].values())},
    }
    for name, model_state in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save({**state, "model": model_state}, path)
        expected = {
            "missing": f"missing key(s) ['{key}']",
            "unexpected": "head.extra.weight",
            "shape": "(3, 3)",
            "a-list": "weights are a list, not a dict of named tensors",
            "int-names": "'0' (int), not a string",
        }
        for load in (load_model, Trainer(tiny_model(), Blocks(), train_cfg(), tmp_path / "t").load_checkpoint):
            with pytest.raises(ValueError) as info:
                load(path)
            msg = str(info.value)
            assert str(path) in msg and expected[name] in msg and "\n" not in msg, msg


def test_checkpoint_of_another_model_size_names_shapes_and_the_fix(tmp_path: Path) -> None:
    ckpt = trained_checkpoint(tmp_path / "run")
    wider = Trainer(tiny_model(width=48), Blocks(), train_cfg(), tmp_path / "wide")
    with pytest.raises(ValueError, match="shape mismatch") as info:
        wider.load_checkpoint(ckpt)
    msg = str(info.value)
    assert str(ckpt) in msg and "vs the model's" in msg and "another preset" in msg and "\n" not in msg
    with pytest.raises(ValueError, match=r"vision\.width|shape mismatch") as info:
        load_model(ckpt, overrides={"vision.width": 48})
    assert "--set overrides" in str(info.value)


def test_other_class_count_never_silently_scores_the_old_classes(tmp_path: Path) -> None:
    ckpt = trained_checkpoint(tmp_path / "run")
    other = load_model(ckpt, overrides={"class_names": ("cat", "dog", "cow"), "unseen_classes": (2,)})
    assert not other.has_class_embeddings  # the stored embeddings are for red/green/blue/yellow
    same = load_model(ckpt)
    assert same.has_class_embeddings and same.class_names == list(CLASSES)
    state = torch.load(ckpt, weights_only=True)
    broken = tmp_path / "broken.pt"
    torch.save({**state, "class_embeddings": torch.zeros(4, 1, 12)}, broken)
    with pytest.raises(ValueError, match=r"class_embeddings \(4, 1, 12\)") as info:
        load_model(broken)
    assert str(broken) in str(info.value)
    # A trainer resuming with another class list: the message says so (the weights themselves are class-agnostic).
    model_state = {k: v for k, v in state["model"].items() if k != "head.q_proj.weight"}
    torch.save({**state, "model": model_state}, broken)
    five = Trainer(tiny_model(classes=(*CLASSES, "black")), Blocks(), train_cfg(), tmp_path / "five")
    with pytest.raises(ValueError, match="trained on 4 classes, this model has 5"):
        five.load_checkpoint(broken)


def test_saved_folder_with_mismatched_weights_is_named(tmp_path: Path) -> None:
    folder = save_pretrained(tiny_model(), tmp_path / "model")
    save_pretrained(tiny_model(width=48), tmp_path / "wide")
    (tmp_path / "wide" / "model.safetensors").replace(folder / "model.safetensors")
    with pytest.raises(ValueError, match="shape mismatch") as info:
        load_pretrained(folder)
    assert "model.safetensors" in str(info.value) and "same save_pretrained" in str(info.value)
    (folder / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_pretrained(folder)
