"""Weights written by otseg carry the SHA-256 of their tensors; a file with flipped bytes is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from otseg.cli import main
from otseg.formats.state_dict import tensor_digest
from otseg.model_files.open_model import load_model
from otseg.model_files.otseg_folder import load_pretrained, save_pretrained
from otseg.train.trainer import Trainer
from tiny_training import Blocks, tiny_model, train_cfg, trained_checkpoint


def _flip_byte_of(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit inside the stored bytes of `tensor` (found by its raw bytes in the file)."""
    data = bytearray(path.read_bytes())
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    at = data.find(raw[:64])
    assert at >= 0, "tensor bytes not found in the file"
    data[at + 10] ^= 0x01
    path.write_bytes(bytes(data))


def test_digest_sees_every_byte_name_and_shape() -> None:
    t = {"a": torch.arange(6, dtype=torch.float32), "b": torch.ones(2, dtype=torch.bool)}
    base = tensor_digest(t)
    assert base == tensor_digest({"b": t["b"].clone(), "a": t["a"].clone()})  # order and copies do not matter
    flipped = t["a"].clone()
    flipped.view(torch.int32)[3] ^= 1
    assert tensor_digest({**t, "a": flipped}) != base
    assert tensor_digest({**t, "a": t["a"].reshape(2, 3)}) != base
    assert tensor_digest({"c": t["a"], "b": t["b"]}) != base


def test_training_checkpoint_with_a_flipped_byte_is_refused(tmp_path: Path, capsys) -> None:
    ckpt = trained_checkpoint(tmp_path / "run")
    capsys.readouterr()  # the training run's progress bar
    state = torch.load(ckpt, weights_only=True)
    assert isinstance(state["sha256"], str) and len(state["sha256"]) == 64
    load_model(ckpt)  # intact: accepted
    _flip_byte_of(ckpt, state["model"]["head.q_proj.weight"])
    flipped = torch.load(ckpt, weights_only=True)  # torch itself reads it without complaint
    assert not torch.equal(flipped["model"]["head.q_proj.weight"], state["model"]["head.q_proj.weight"])
    with pytest.raises(ValueError, match=r"iter_2\.pt: its tensors do not match the SHA-256") as info:
        load_model(ckpt)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="SHA-256"):
        Trainer(tiny_model(), Blocks(), train_cfg(), tmp_path / "again").load_checkpoint(ckpt)
    code = main(["segment", str(tmp_path / "x.png"), "--checkpoint", str(ckpt), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "SHA-256" in err and len(err.strip().splitlines()) == 1


def test_saved_folder_with_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    model = tiny_model()
    folder = save_pretrained(model, tmp_path / "m")
    load_pretrained(folder)
    _flip_byte_of(folder / "model.safetensors", model.state_dict()["head.q_proj.weight"])
    with pytest.raises(ValueError, match=r"model\.safetensors: its tensors do not match the SHA-256"):
        load_pretrained(folder)
