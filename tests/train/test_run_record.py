"""`run.json`, the record of every training run: versions, device, batch decomposition, seed, Sinkhorn backward,
SHA-256 of the config, the class embeddings and the CLIP weights; kept across resumes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from fake_layouts import make_voc

import otseg
from conftest import golden_file, tiny_train_args
from otseg.cli import main
from otseg.config import TrainConfig
from otseg.ops import SinkhornOptions
from otseg.ops.sinkhorn_options import SinkhornBackward
from otseg.train.run_record import (
    RUN_RECORD_FORMAT,
    _sinkhorn_backward,
    batch_decomposition,
    file_sha256,
    tensor_sha256,
    write_run_record,
)


def test_train_writes_the_run_record_and_keeps_it_across_resumes(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "data")
    wd = tmp_path / "run"
    assert main(["train", *tiny_train_args("voc12-inductive", root, wd, max_iters=2)]) == 0
    record = json.loads((wd / "run.json").read_text())
    assert record["format"] == RUN_RECORD_FORMAT and record["start_step"] == 0 and record["earlier_starts"] == []
    assert record["versions"]["otseg"] == otseg.__version__
    assert record["versions"]["torch"] == torch.__version__
    assert record["device"]["type"] == "cpu" and record["device"]["count"] == 1 and record["device"]["name"]
    batch = record["batch"]
    assert (batch["batch_size"], batch["grad_accum"], batch["world_size"]) == (2, 1, 1)
    assert batch["images_per_step"] == 2
    saved_train = json.loads((wd / "config.json").read_text())["train"]
    assert batch["global_batch"] == saved_train.get("global_batch", 2)
    assert record["seed"] == 0
    assert record["sinkhorn_backward"] in ("implicit", "unrolled") and record["sinkhorn_backward_source"]

    digests = record["sha256"]
    assert digests["config.json"] == hashlib.sha256((wd / "config.json").read_bytes()).hexdigest()
    clip = golden_file("openai_clip_jit.pt")
    assert digests["clip"] == hashlib.sha256(clip.read_bytes()).hexdigest()
    assert record["inputs"]["clip"] == str(clip.resolve())
    # The class embeddings the model trained with (embedded live from the names here: no file).
    saved = torch.load(wd / "iter_2.pt", weights_only=True)["class_embeddings"]
    assert digests["class_embeddings"] == tensor_sha256(saved) and digests["class_embeddings_file"] is None
    assert record["class_embeddings_shape"] == [20, 6, 32]  # all classes (training reads the seen rows)

    # Resumed on "other hardware": the first start's record is kept.
    assert main(["train", *tiny_train_args("voc12-inductive", root, wd, max_iters=3), "--resume", "auto"]) == 0
    resumed = json.loads((wd / "run.json").read_text())
    assert resumed["start_step"] == 2
    assert [r["start_step"] for r in resumed["earlier_starts"]] == [0]
    assert "earlier_starts" not in resumed["earlier_starts"][0]


def test_class_embeddings_file_is_hashed_as_given(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "data")
    emb = torch.nn.functional.normalize(torch.randn(20, 6, 32), dim=-1).half()
    path = tmp_path / "emb.pt"
    torch.save(emb, path)
    wd = tmp_path / "run"
    args = tiny_train_args("voc12-inductive", root, wd, max_iters=1)
    assert main(["train", *args, "--embeddings", str(path)]) == 0
    record = json.loads((wd / "run.json").read_text())
    assert record["sha256"]["class_embeddings_file"] == file_sha256(path)
    # The tensor digest is of the float32 values used, the same for the float16 file and its upcast.
    assert record["sha256"]["class_embeddings"] == tensor_sha256(emb.float())


def test_sinkhorn_backward_names_where_it_comes_from() -> None:
    cfg, head = TrainConfig(), otseg.HeadConfig()
    value, source = _sinkhorn_backward(cfg, head)
    assert (value, source) == (getattr(cfg, "sinkhorn_backward", None) or "implicit", source)
    # The options the trainer passes down: built from the training config, so named after it when they agree.
    trainer_options = SinkhornOptions(backward=cfg.sinkhorn_backward, stop_group=cfg.sinkhorn_stop_group)
    assert _sinkhorn_backward(cfg, head, trainer_options) == (cfg.sinkhorn_backward, "train.sinkhorn_backward")
    other: SinkhornBackward = "unrolled" if cfg.sinkhorn_backward == "implicit" else "implicit"
    assert _sinkhorn_backward(cfg, head, SinkhornOptions(backward=other)) == (other, "sinkhorn options")


def test_batch_decomposition_reads_a_global_batch_setting_when_there_is_one() -> None:
    cfg = TrainConfig(batch_size=4, grad_accum=2)
    plain = batch_decomposition(cfg, world_size=2)
    assert plain["images_per_step"] == 16 and plain["world_size"] == 2

    @dataclasses.dataclass
    class WithGlobal:  # a TrainConfig that has the global-batch field
        batch_size: int = 4
        grad_accum: int = 2
        global_batch: int = 16

    with_global = batch_decomposition(WithGlobal(), world_size=2)  # type: ignore[arg-type]
    assert with_global["global_batch"] == 16 and with_global["global_batch_source"] == "train.global_batch"


def test_unreadable_old_record_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text("{ half a file")
    write_run_record(tmp_path, {"format": RUN_RECORD_FORMAT, "start_step": 5})
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["start_step"] == 5 and record["earlier_starts"] == []
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left behind
