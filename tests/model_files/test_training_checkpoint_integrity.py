"""The SHA-256 of a training checkpoint covers all of it (weights, class embeddings, optimiser, scaler and RNG state,
step, configs), and a checkpoint without it is refused unless the user trusts it
(`otseg.model_files.training_checkpoint`, `otseg.train.trainer.Trainer.load_checkpoint`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from otseg.cli import main
from otseg.model_files.open_model import load_model
from otseg.model_files.training_checkpoint import (
    CHECKPOINT_DIGEST_KEY,
    SEALED_KEYS,
    UnverifiedCheckpointError,
    whole_checkpoint_digest,
)
from otseg.train.trainer import Trainer
from tiny_training import Blocks, tiny_model, train_cfg, trained_checkpoint


def _flip_bytes_of(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit inside the stored bytes of `tensor` (found by its raw bytes in the file)."""
    data = bytearray(path.read_bytes())
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    at = data.find(raw[:64])
    assert at >= 0 and data.find(raw[:64], at + 1) < 0, "tensor bytes not found once in the file"
    data[at + min(10, len(raw) - 1)] ^= 0x01
    path.write_bytes(bytes(data))


def _trainer(tmp_path: Path, name: str = "again") -> Trainer:
    return Trainer(tiny_model(), Blocks(), train_cfg(), tmp_path / name)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_checkpoint(tmp_path_factory.mktemp("run") / "run")


def _copy(checkpoint: Path, tmp_path: Path) -> Path:
    out = tmp_path / checkpoint.name
    out.write_bytes(checkpoint.read_bytes())
    return out


def test_the_digest_covers_every_entry_written_with_it(checkpoint: Path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    assert state[CHECKPOINT_DIGEST_KEY] == whole_checkpoint_digest(state)
    for key in ("model", "class_embeddings", "optimizer", "scaler", "rng", "step", "train_config", "model_config"):
        assert key in state[SEALED_KEYS]
    edited = {**state, "step": state["step"] + 1}
    assert whole_checkpoint_digest(edited) != state[CHECKPOINT_DIGEST_KEY]
    nested = {**state, "rng": {**state["rng"], "python": [*state["rng"]["python"][:2], 0.5]}}
    assert whole_checkpoint_digest(nested) != state[CHECKPOINT_DIGEST_KEY]
    dropped = {**state, SEALED_KEYS: [k for k in state[SEALED_KEYS] if k != "optimizer"]}  # a shorter list
    assert whole_checkpoint_digest(dropped) != state[CHECKPOINT_DIGEST_KEY]
    with pytest.raises(ValueError, match=r"lacks \['optimizer'\]"):
        whole_checkpoint_digest({k: v for k, v in state.items() if k != "optimizer"})
    # An entry added afterwards is outside the digest (otseg never reads it).
    assert whole_checkpoint_digest({**state, "note": "mine"}) == state[CHECKPOINT_DIGEST_KEY]
    plain = {SEALED_KEYS: ["a"]}
    assert whole_checkpoint_digest({**plain, "a": [1, 2]}) != whole_checkpoint_digest({**plain, "a": (1, 2)})
    assert whole_checkpoint_digest({**plain, "a": 1}) != whole_checkpoint_digest({**plain, "a": 1.0})


@pytest.mark.parametrize("where", ["optimizer", "rng"])
def test_a_flipped_byte_in_the_optimiser_or_rng_state_is_refused(
    checkpoint: Path, tmp_path: Path, where: str, capsys
) -> None:
    path = _copy(checkpoint, tmp_path)
    state = torch.load(path, weights_only=True)
    target = state["optimizer"]["state"][0]["exp_avg"] if where == "optimizer" else state["rng"]["torch"]
    _flip_bytes_of(path, target)
    flipped = torch.load(path, weights_only=True)  # torch itself reads it without complaint
    assert torch.equal(flipped["model"]["head.q_proj.weight"], state["model"]["head.q_proj.weight"])
    with pytest.raises(ValueError) as info:
        _trainer(tmp_path).load_checkpoint(path)  # resuming
    msg = str(info.value)
    assert str(path) in msg and "SHA-256" in msg and "optimiser" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="SHA-256"):
        load_model(path)  # the weights are intact, but the file is not the one written: refused for any use
    code = main(["segment", str(tmp_path / "x.png"), "--checkpoint", str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "SHA-256" in err and len(err.strip().splitlines()) == 1


def test_an_edited_step_with_the_old_digest_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    path = tmp_path / "iter_2.pt"
    torch.save({**state, "step": 1}, path)
    with pytest.raises(ValueError, match=r"iter_2\.pt: its tensors do not match the SHA-256"):
        _trainer(tmp_path).load_checkpoint(path)


def test_an_older_checkpoint_with_a_weights_only_digest(checkpoint: Path, tmp_path: Path) -> None:
    """Written before the whole digest existed: its weights are verified, its optimiser and RNG state are not, so
    resuming from it needs the user's word; its weights serve (inference, --init-from) as they are."""
    state = torch.load(checkpoint, weights_only=True)
    path = tmp_path / "iter_2.pt"
    torch.save({k: v for k, v in state.items() if k != CHECKPOINT_DIGEST_KEY}, path)
    with pytest.raises(UnverifiedCheckpointError) as info:
        _trainer(tmp_path).load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "--trust-unverified" in msg and "--init-from" in msg and "\n" not in msg
    assert load_model(path).num_classes == 4
    _trainer(tmp_path, "init").load_checkpoint(path, weights_only_init=True)
    trusting = _trainer(tmp_path, "trusting")
    trusting.trust_unverified = True
    trusting.load_checkpoint(path)
    assert trusting.step == state["step"]


def test_a_checkpoint_without_any_digest_is_refused_unless_trusted(checkpoint: Path, tmp_path: Path, capsys) -> None:
    state = torch.load(checkpoint, weights_only=True)
    path = tmp_path / "iter_2.pt"
    torch.save({k: v for k, v in state.items() if k not in (CHECKPOINT_DIGEST_KEY, "sha256")}, path)
    for load in (load_model, _trainer(tmp_path).load_checkpoint):
        with pytest.raises(UnverifiedCheckpointError, match="--trust-unverified"):
            load(path)
    assert load_model(path, trust_unverified=True).num_classes == 4
    code = main(["segment", str(tmp_path / "x.png"), "--checkpoint", str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--trust-unverified" in err and len(err.strip().splitlines()) == 1


def test_integer_class_embeddings_with_a_recomputed_digest_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    """Even resealed by whoever edited it, a checkpoint whose class embeddings are integers does not load: they would
    be cast silently and score as nonsense."""
    state = torch.load(checkpoint, weights_only=True)
    state["class_embeddings"] = (state["class_embeddings"] * 100).round().to(torch.int64)
    state[CHECKPOINT_DIGEST_KEY] = whole_checkpoint_digest(state)
    edited = tmp_path / checkpoint.name
    torch.save(state, edited)
    with pytest.raises(ValueError) as info:
        load_model(edited)
    message = str(info.value)
    assert "\n" not in message and str(edited) in message and "floating-point" in message and "int64" in message
