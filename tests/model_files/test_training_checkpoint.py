"""The training-checkpoint format in its one home: what `training_checkpoint` builds and
`write_training_checkpoint` writes, `read_training_checkpoint` reads back and checks."""

from __future__ import annotations

import pytest
import torch

from otseg.model_files.training_checkpoint import (
    TRAINING_FORMAT,
    UnreadableCheckpointError,
    is_training_checkpoint,
    read_training_checkpoint,
    training_checkpoint,
    verify_training_digest,
    write_training_checkpoint,
)


def _checkpoint() -> dict:
    return training_checkpoint(
        step=3,
        model_state={"head.weight": torch.arange(6.0).reshape(2, 3)},
        class_embeddings=torch.ones(2, 1, 3),
        class_names=["a", "b"],
        model_config={"name": "x"},
        train_config={"max_iters": 3},
        optimizer={"state": {}, "param_groups": []},
        scaler={},
        rng={"torch": torch.zeros(4, dtype=torch.uint8)},
    )


def test_written_and_read_back(tmp_path):
    path = tmp_path / "iter_3.pt"
    write_training_checkpoint(_checkpoint(), path)
    ckpt = read_training_checkpoint(path, required=("model", "optimizer", "step"))
    assert is_training_checkpoint(ckpt) and ckpt["format"] == TRAINING_FORMAT and ckpt["step"] == 3
    # The entries in the order the trainer writes them, the digests last (the whole one over `sealed_keys`).
    assert list(ckpt) == ["format", "step", "model", "class_embeddings", "optimizer", "scaler", "rng", "train_config",
                          "model_config", "class_names", "sha256", "sealed_keys", "checkpoint_sha256"]  # fmt: skip
    assert torch.equal(ckpt["model"]["head.weight"], torch.arange(6.0).reshape(2, 3))
    verify_training_digest(ckpt, str(path))  # the digest written is the digest read
    ckpt["model"]["head.weight"][0, 0] += 1
    with pytest.raises(ValueError, match="do not match the SHA-256"):
        verify_training_digest(ckpt, str(path))


def test_what_is_not_one_is_named(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an otseg training checkpoint") as info:
        read_training_checkpoint(tmp_path / "other.pt")
    assert not isinstance(info.value, UnreadableCheckpointError)
    partial = _checkpoint()
    del partial["optimizer"]
    write_training_checkpoint(partial, tmp_path / "iter_1.pt")
    with pytest.raises(ValueError, match=r"lacks \['optimizer'\]"):
        read_training_checkpoint(tmp_path / "iter_1.pt", required=("model", "optimizer"))
    (tmp_path / "iter_2.pt").write_bytes(b"truncated")
    with pytest.raises(UnreadableCheckpointError, match=r"iter_2\.pt"):
        read_training_checkpoint(tmp_path / "iter_2.pt")
