"""`run.json`: what a training run ran with, beside its `config.json`, so that a result can be traced and repeated.

The trainer writes it once per start, on rank 0, after `config.json` (`write_run_record`). It holds the otseg,
torch and Python versions, the device kind, name and count, the batch decomposition (global batch = per-process
batch x accumulation x processes), the seed, the Sinkhorn backward in force, and SHA-256 digests of `config.json`
as written, of the class embeddings the model uses (the tensor itself, whether read from a file or embedded live,
and the file too when there is one) and of the CLIP weights file (`--clip`). A resumed run keeps the records of the
earlier starts under "earlier_starts", so the file tells when the hardware or the inputs changed mid-run.

Hashing a file reads it once, in 1 MiB blocks (ViT-B-16.pt, 335 MB: about a second).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from otseg.config import TrainConfig
from otseg.distributed import DistInfo
from otseg.ops.sinkhorn import sinkhorn
from otseg.ops.sinkhorn_options import SinkhornOptions
from otseg.utils import atomic_write_text
from otseg.version import __version__

__all__ = ["RUN_RECORD", "RUN_RECORD_FORMAT", "RunInputs", "build_run_record", "file_sha256", "tensor_sha256",
           "write_run_record"]  # fmt: skip

RUN_RECORD = "run.json"
RUN_RECORD_FORMAT = "otseg-run-record/1"
_BLOCK = 1 << 20


@dataclass(frozen=True)
class RunInputs:
    """The files a run was started with (None: not given), for the record's digests and provenance.

    Attributes:
        clip: the CLIP weights file (`--clip`), or None (`--random-init`, or weights already in the model).
        embeddings: the class-embeddings file (`--embeddings`), or None (embedded live from the class names).
        data_root, dataset: where the training data came from.
        data: the training pipeline's settings (`dataclasses.asdict` of its `DataConfig`).
        command: the command line, e.g. `sys.argv`.
    """

    clip: str | None = None
    embeddings: str | None = None
    data_root: str | None = None
    dataset: str | None = None
    data: dict[str, Any] | None = None
    command: tuple[str, ...] = field(default_factory=tuple)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def tensor_sha256(t: Tensor) -> str:
    """Hex SHA-256 of a tensor's values as float32, C order (so a file's float16 rows and their float32 upcast,
    the values the model computes with, agree)."""
    values = t.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(values.numpy().tobytes()).hexdigest()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    try:  # the CPU model, where Linux tells it
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or device.type


def _sinkhorn_backward(cfg: TrainConfig, head_cfg: Any, options: SinkhornOptions | None = None) -> tuple[str, str]:
    """(backward, where that value comes from): the `SinkhornOptions` the trainer passes down its forward passes
    (built from the training config: named so when they agree), the training config, the head config, or the
    library default of `otseg.ops.sinkhorn.sinkhorn`."""
    if options is not None and options.backward != getattr(cfg, "sinkhorn_backward", None):
        return options.backward, "sinkhorn options"
    for owner, where in ((cfg, "train.sinkhorn_backward"), (head_cfg, "head.sinkhorn_backward")):
        value = getattr(owner, "sinkhorn_backward", None)
        if value is not None:
            return str(value), where
    return str(inspect.signature(sinkhorn).parameters["backward"].default), "library default"


def batch_decomposition(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """Global batch, per-process batch, accumulation steps and process count; `global_batch_source` says whether
    the global batch is a setting (`train.global_batch`) or the product of the other three."""
    product = cfg.batch_size * cfg.grad_accum * world_size
    configured = getattr(cfg, "global_batch", None)
    return {
        "global_batch": configured if configured is not None else product,
        "global_batch_source": "train.global_batch" if configured is not None else "batch_size x grad_accum x world",
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "world_size": world_size,
        "images_per_step": product,
    }


def build_run_record(
    cfg: TrainConfig,
    model: Any,
    dist: DistInfo,
    work_dir: str | os.PathLike,
    inputs: RunInputs | None = None,
    start_step: int = 0,
    sinkhorn_options: SinkhornOptions | None = None,
) -> dict[str, Any]:
    """The record of one start of a run (JSON-serialisable). `model` is the `OTSeg` being trained; `work_dir`
    holds the `config.json` just written; `sinkhorn_options` are those the trainer passes to the model's forward."""
    inputs = inputs or RunInputs()
    config_path = Path(work_dir) / "config.json"
    backward, backward_source = _sinkhorn_backward(cfg, model.config.head, sinkhorn_options)
    emb = model.class_embeddings
    record: dict[str, Any] = {
        "format": RUN_RECORD_FORMAT,
        "start_step": start_step,
        "versions": {
            "otseg": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
        },
        "device": {
            "type": dist.device.type,
            "name": _device_name(dist.device),
            "count": dist.world_size,  # one device per process
            "visible_gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        },
        "batch": batch_decomposition(cfg, dist.world_size),
        "seed": cfg.seed,
        "sinkhorn_backward": backward,
        "sinkhorn_backward_source": backward_source,
        "amp": cfg.amp,
        "sha256": {
            "config.json": file_sha256(config_path) if config_path.is_file() else None,
            "class_embeddings": tensor_sha256(emb),
            "class_embeddings_file": file_sha256(inputs.embeddings) if inputs.embeddings else None,
            "clip": file_sha256(inputs.clip) if inputs.clip else None,
        },
        "class_embeddings_shape": list(emb.shape),
        "inputs": {
            "clip": os.path.abspath(inputs.clip) if inputs.clip else None,
            "embeddings": os.path.abspath(inputs.embeddings) if inputs.embeddings else None,
            "data_root": os.path.abspath(inputs.data_root) if inputs.data_root else None,
            "dataset": inputs.dataset,
        },
        "data_pipeline": inputs.data,
        "command": list(inputs.command),
        "executable": sys.executable,
    }
    return record


def write_run_record(work_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write `record` to `work_dir/run.json` atomically; the records of earlier starts already there are kept under
    "earlier_starts" (oldest first). An unreadable old file is replaced (it only described the past)."""
    path = Path(work_dir) / RUN_RECORD
    earlier: list[dict[str, Any]] = []
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("format") == RUN_RECORD_FORMAT:
            earlier = [*old.pop("earlier_starts", []), old]
    atomic_write_text(path, json.dumps({**record, "earlier_starts": earlier}, indent=2) + "\n")
    return path
