"""Iteration-based trainer: AdamW + poly schedule, autocast, gradient accumulation, DDP, atomic resumable
checkpoints, JSONL metrics (TensorBoard optional), tqdm progress on rank 0.

Resuming reproduces an uninterrupted run exactly: the sample order is a function of (seed, step), every
sample's augmentation is seeded by its position in that order, and the RNG states (torch, numpy, python) are
saved with the weights, optimizer, scaler and step.

Bad training data (an unreadable, corrupt or truncated image or label, label values out of range, an
image/label size mismatch) is caught where the sample is loaded, in the DataLoader worker or in-process, and
reported in the main process as one line naming the file. `TrainConfig.bad_samples` says what happens then:
"stop" ends training (`BadSampleError`; the checkpoints written so far stay), "skip" replaces the sample by
the next readable one in dataset order (deterministic, so resuming stays exact), warns once per file, and
logs a count and the files to metrics.jsonl; too many bad samples stop the run all the same.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from otseg.config import TrainConfig
from otseg.distributed import DistInfo, all_reduce_mean, barrier
from otseg.formats.state_dict import check_state_dict_fits
from otseg.formats.torch_pickle import safe_torch_load
from otseg.formats.training_checkpoint import TRAINING_FORMAT, checkpoint_digest, verify_training_digest
from otseg.model.segmentor import OTSeg
from otseg.train.lock import WorkDirLock
from otseg.train.objective import compute_losses, total_loss
from otseg.train.schedule import build_optimizer, poly_lr
from otseg.utils import atomic_torch_save, atomic_write_text, describe_write_failure, is_atomic_temp_file

if TYPE_CHECKING:
    from otseg.data.datasets import SegmentationDataset

__all__ = [
    "BadSampleError",
    "StepBatchSampler",
    "Trainer",
    "find_latest_checkpoint",
]

CKPT_PATTERN = re.compile(r"^iter_(\d+)\.pt$")

# What reading a bad sample raises (otseg.data.datasets turns every decoder failure into one of these, naming
# the file): OSError (FileNotFoundError, unreadable / corrupt / truncated files) and ValueError (label values
# out of range, size mismatch, colour-coded masks).
SAMPLE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError)
# With bad_samples="skip", how many samples (the bad one and the next ones in dataset order) are tried before
# a micro-batch slot is given up on.
_MAX_REPLACEMENT_TRIES = 8


class _SizedDataset(Protocol):
    """What the trainer reads: a map-style dataset with a length (e.g. `otseg.data.SegmentationDataset`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class BadSampleError(ValueError):
    """A training sample could not be read or failed its checks, and training stopped."""


def find_latest_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    """The `iter_N.pt` with the largest N in `work_dir`, or None."""
    d = Path(work_dir)
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_PATTERN.match(p.name))]
    return max(found)[1] if found else None


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's micro-batches for steps start..max_iters-1 as lists of (dataset index, sample seed).

    The global order is a fresh permutation of the dataset per epoch, drawn from (seed, epoch); micro-batch j
    of step s takes the next `batch * world` positions of that order, and rank r takes every world-th one.
    Each sample's seed is derived from its global position, so augmentation does not depend on workers,
    ranks or where a run was resumed.
    """

    def __init__(self, n: int, batch: int, world: int, rank: int, accum: int, start: int, stop: int, seed: int):
        if n == 0:
            raise ValueError("the training set is empty")
        self.n, self.batch, self.world, self.rank, self.accum = n, batch, world, rank, accum
        self.start, self.stop, self.seed = start, stop, seed
        self._perm_epoch = -1
        self._perm: list[int] = []  # drawn on first use (epoch -1 never matches)

    def _position(self, pos: int) -> int:
        epoch, offset = divmod(pos, self.n)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
        return self._perm[offset]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_micro = self.batch * self.world
        for step in range(self.start, self.stop):
            for micro in range(self.accum):
                base = (step * self.accum + micro) * per_micro
                positions = range(base + self.rank, base + per_micro, self.world)
                yield [(self._position(p), (self.seed * 1_000_003 + p) % 2**63) for p in positions]

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accum


class _SeededDataset(Dataset):
    """Calls `dataset.get(index, rng)` with a generator seeded per sample (falls back to `dataset[index]`).

    A sample that raises one of `SAMPLE_ERRORS` does not raise here (in a DataLoader worker the exception would
    reach the main process as a multi-line traceback): the item records it under "bad" as (sample, message)
    pairs. With `skip_bad` the next samples in dataset order are tried (same augmentation seed) until one
    loads; without, or when none of `_MAX_REPLACEMENT_TRIES` loads, the item is marked "failed".
    """

    def __init__(self, dataset: _SizedDataset, skip_bad: bool = False) -> None:
        self.dataset = dataset
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def _sample_name(self, index: int) -> str:
        samples = getattr(self.dataset, "samples", None)
        try:
            return str(samples[index][0]) if samples is not None else f"sample {index}"
        except (IndexError, KeyError, TypeError):
            return f"sample {index}"

    def _load(self, index: int, seed: int) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        if hasattr(self.dataset, "get"):
            return self.dataset.get(index, rng)
        transform = getattr(self.dataset, "transform", None)
        if hasattr(self.dataset, "load") and transform is not None:  # otseg.data.SegmentationDataset
            dataset = cast("SegmentationDataset", self.dataset)
            image, label = dataset.load(index)  # reads and checks the files: the only step that may fail
            try:
                image_t, label_t = transform(image, label, rng=rng)
            except SAMPLE_ERRORS as e:
                # An error of the transform itself is a bug, not bad data: never skip it as a bad file.
                raise RuntimeError(f"transform failed on {self._sample_name(index)}: {e}") from e
            return {"image": image_t, "label": label_t, "path": str(dataset.samples[index][0])}
        return self.dataset[index]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        n = len(self.dataset)
        bad: list[tuple[str, str]] = []
        for k in range(min(n, _MAX_REPLACEMENT_TRIES) if self.skip_bad else 1):
            j = (index + k) % n  # deterministic replacement: resuming and worker layouts see the same one
            try:
                item = dict(self._load(j, seed))
            except SAMPLE_ERRORS as e:
                bad.append((self._sample_name(j), " ".join(str(e).split()) or type(e).__name__))
                continue
            item["bad"] = bad
            return item
        return {"bad": bad, "failed": True}


class _LossOutputs(torch.nn.Module):
    """What DDP wraps: the model, with every output the loss does not read detached.

    DDP (find_unused_parameters=True) marks as "used" every parameter reachable from any tensor in the forward
    output, dataclass fields included. `HeadOutput.layer_queries` holds the last decoder layer's updated
    queries, whose value/FFN parameters never reach the loss: left attached, DDP waits for their gradients and
    the second step fails with "Expected to have finished reduction in the prior iteration".
    """

    LOSS_FIELDS = ("decoder_logits", "mps_logits")

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, text: Tensor | None = None, upsample: bool = True) -> Any:
        out = self.model(images, text, upsample=upsample)
        if not dataclasses.is_dataclass(out) or isinstance(out, type):  # an instance (HeadOutput), not a class
            return out
        detached = {
            f.name: _detach_all(getattr(out, f.name)) for f in dataclasses.fields(out) if f.name not in self.LOSS_FIELDS
        }
        return dataclasses.replace(out, **detached)


def _detach_all(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)):
        return type(value)(_detach_all(v) for v in value)
    return value


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a micro-batch; "bad" lists the (sample, message) pairs met, "failed" a slot left without a sample."""
    bad = [b for s in samples for b in s.get("bad", ())]
    requested = len(samples)
    if any(s.get("failed") for s in samples):
        return {"bad": bad, "failed": True, "requested": requested}
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "label": torch.stack([s["label"] for s in samples]),
        "path": [s.get("path", "") for s in samples],
        "bad": bad,
        "requested": requested,
    }


class Trainer:
    """Trains an `otseg.OTSeg` in its configured setting (inductive, transductive or fully supervised).

    Args:
        model: the segmentor (with class embeddings set and CLIP weights loaded).
        train_set: dataset of dicts {"image": (3, H, W) float, "label": (H, W) int64}, all the same crop size;
            if it has `get(index, rng)`, augmentation draws from the per-sample generator.
        cfg: optimisation settings.
        work_dir: receives `iter_N.pt` checkpoints, `last_checkpoint` (name of the newest), `metrics.jsonl`,
            `config.json`.
        evaluate: optional callback `evaluate(model) -> dict` run every `cfg.eval_interval` steps and at the end.
        dist_info: from `init_distributed()`; single process by default.
        progress: show a tqdm bar (on rank 0).
        on_step: optional callback `on_step(step)` after every optimizer step (on rank 0), e.g. to drive a
            progress display of several runs.
    """

    def __init__(
        self,
        model: OTSeg,
        train_set: _SizedDataset,
        cfg: TrainConfig,
        work_dir: str | os.PathLike,
        evaluate: Callable[[OTSeg], dict[str, Any]] | None = None,
        dist_info: DistInfo | None = None,
        progress: bool = True,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        if cfg.bad_samples not in ("stop", "skip"):
            raise ValueError(f"train.bad_samples must be 'stop' or 'skip', got {cfg.bad_samples!r}")
        if not 0.0 < cfg.max_bad_fraction <= 1.0:
            raise ValueError(f"train.max_bad_fraction must be in (0, 1], got {cfg.max_bad_fraction}")
        self.cfg = cfg
        self.dist = dist_info or DistInfo(
            device=torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        )
        self.work_dir = Path(work_dir)
        self.model = model.to(self.dist.device)
        self.model.backbone.checkpoint_blocks = cfg.checkpoint_backbone
        self.train_set = train_set
        self.evaluate_fn = evaluate
        self.show_progress = progress
        self.on_step = on_step
        self.optimizer = build_optimizer(self.model.named_parameters(), cfg.lr, cfg.weight_decay, cfg.backbone_lr_mult)
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=cfg.amp == "fp16")
        self.step = 0
        # bad_samples="skip" bookkeeping (this process, this run): sample -> first message, and how many times
        # a bad sample was replaced.
        self.bad_files: dict[str, str] = {}
        self.skipped_samples = 0
        self.ddp_model: torch.nn.Module = self.model
        if self.dist.enabled:
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            # find_unused_parameters: the last decoder layer's value/FFN path only feeds discarded queries.
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                _LossOutputs(self.model), device_ids=ids, find_unused_parameters=True
            )

    # ------------------------------------------------------------------ checkpoints
    def _trainable_state(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith("text_encoder.")}

    def checkpoint_state(self) -> dict[str, Any]:
        rng = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        model_state = self._trainable_state()
        class_embeddings = self.model.class_embeddings.detach().cpu()
        return {
            "format": TRAINING_FORMAT,
            "step": self.step,
            "model": model_state,
            "class_embeddings": class_embeddings,
            # Loading verifies it: a checkpoint with flipped bytes is refused instead of silently used.
            "sha256": checkpoint_digest(model_state, class_embeddings),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_to_plain(rng),
            "train_config": asdict(self.cfg),
            "model_config": self.model.config.to_dict(),
            "class_names": list(self.model.class_names),
        }

    def save_checkpoint(self) -> Path | None:
        """Write `iter_{step}.pt` atomically (rank 0), then prune old ones. Returns the path on rank 0."""
        path = None
        if self.dist.is_main:
            path = self.work_dir / f"iter_{self.step}.pt"
            atomic_torch_save(self.checkpoint_state(), path)
            atomic_write_text(self.work_dir / "last_checkpoint", path.name + "\n")
            ckpts = sorted((int(m.group(1)), p) for p in self.work_dir.iterdir() if (m := CKPT_PATTERN.match(p.name)))
            for step, old in ckpts[: -self.cfg.keep_checkpoints]:
                if not (self.cfg.keep_every and step % self.cfg.keep_every == 0):
                    old.unlink(missing_ok=True)
        barrier()
        return path

    def load_checkpoint(self, path: str | os.PathLike, weights_only_init: bool = False) -> None:
        """Resume from a trainer checkpoint (or, with weights_only_init, take only its weights).

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file cannot be read (`_UnreadableCheckpoint`), is not a training checkpoint, or does
                not fit this model; one line naming the file.
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint {p} does not exist")
        try:
            ckpt = safe_torch_load(
                p,
                "checkpoint",
                pickle_hint="checkpoints written by otseg train never hold any, so this is not one of them; pass "
                "the iter_N.pt of a training run",
            )
        except ValueError as e:
            raise _UnreadableCheckpoint(str(e)) from e
        if not isinstance(ckpt, dict) or ckpt.get("format") != TRAINING_FORMAT:
            raise ValueError(f"{p} is not an otseg training checkpoint (an iter_N.pt written by otseg train)")
        absent = [k for k in ("model", "optimizer", "scaler", "step", "rng") if k not in ckpt]
        if absent:
            raise ValueError(f"training checkpoint {p} lacks {absent}: it is damaged; use an older iter_N.pt")
        state = ckpt["model"]
        saved_names = ckpt.get("class_names")
        fix = "was it trained with another preset or other --set sizes? train with the same ones"
        if saved_names is not None and len(saved_names) != len(self.model.class_names):
            fix += (
                f" (it was trained on {len(saved_names)} classes, this model has {len(self.model.class_names)}: "
                "the weights are class-agnostic, so that alone would not matter)"
            )
        check_state_dict_fits(self.model, state, f"checkpoint {p}", may_be_missing=("text_encoder.",), fix=fix)
        try:  # after the fit check, so that edited keys are named rather than only caught
            verify_training_digest(ckpt, f"checkpoint {p}")
        except ValueError as e:
            raise _UnreadableCheckpoint(str(e)) from None
        self.model.load_state_dict(state, strict=False)  # strict=False: the frozen text tower is never saved
        if weights_only_init:
            return
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise ValueError(
                f"checkpoint {p}: its optimizer state does not fit this model's trainable parameters ({e}); "
                "to start a new run from its weights use --init-from instead of --resume"
            ) from e
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        _restore_rng(ckpt["rng"])

    def _resume_auto(self) -> bool:
        """Resume from the newest readable `iter_N.pt` in work_dir; False when there is none (start fresh).

        A newest file that cannot be read (copied in half, disk trouble: our own writes are atomic) is
        reported and the one before it is used, so that one bad file does not cost the whole run.
        """
        found = sorted(
            ((int(m.group(1)), p) for p in self.work_dir.iterdir() if (m := CKPT_PATTERN.match(p.name))), reverse=True
        )
        for i, (_, path) in enumerate(found):
            try:
                self.load_checkpoint(path)
                return True
            except _UnreadableCheckpoint as e:
                if i + 1 == len(found):
                    raise
                self._warn(f"{e}; resuming from the previous checkpoint {found[i + 1][1].name} instead")
        return False

    def _remove_stale_temp_files(self) -> None:
        """Delete temp files of checkpoint writes that a killed process left behind (never read; only disk)."""
        if not self.dist.is_main:
            return
        for p in self.work_dir.iterdir():
            if is_atomic_temp_file(p.name) and (
                p.name.startswith(".iter_") or is_atomic_temp_file(p.name, "last_checkpoint")
            ):
                p.unlink(missing_ok=True)

    def _warn(self, message: str) -> None:
        prefix = f"[rank {self.dist.rank}] " if self.dist.enabled else ""
        tqdm.write(f"otseg train: warning: {prefix}{message}", file=sys.stderr)

    # ------------------------------------------------------------------ training
    def _loader(self) -> DataLoader:
        d = self.dist
        sampler = StepBatchSampler(
            len(self.train_set), self.cfg.batch_size, d.world_size, d.rank, self.cfg.grad_accum,
            self.step, self.cfg.max_iters, self.cfg.seed,
        )  # fmt: skip
        return DataLoader(
            _SeededDataset(self.train_set, skip_bad=self.cfg.bad_samples == "skip"),
            batch_sampler=sampler,
            num_workers=self.cfg.num_workers,
            collate_fn=_collate,
            pin_memory=d.device.type == "cuda",
            persistent_workers=False,
            # Its own generator: drawing worker seeds from the global RNG would shift the dropout stream
            # between an uninterrupted and a resumed run.
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def _autocast(self):
        if self.cfg.amp == "none":
            return torch.autocast(self.dist.device.type, enabled=False)
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.dist.device.type, dtype=dtype)

    def _num_masks_reducer(self, count: Tensor) -> Tensor:
        # The reference all-reduces the number of present masks and divides by the world size.
        return all_reduce_mean(count.float()).clamp(min=1)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        path = self.work_dir / "metrics.jsonl"
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: name the file, not only "[Errno 28]"
            raise OSError(f"cannot write {path}: {describe_write_failure(e, self.work_dir)}") from None
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, record.get("step", 0))

    def train(self, resume: str | None = None) -> dict[str, Any]:
        """Run to `cfg.max_iters`. `resume`: None, "auto" (latest in work_dir if any), or a checkpoint path."""
        # One trainer per work dir: a second one refuses here, naming the PID that holds it, before it writes.
        lock = WorkDirLock(self.work_dir).acquire() if self.dist.is_main else None
        try:
            if lock is not None and lock.took_over is not None:
                self._warn(f"took over the lock of an earlier run (PID {lock.took_over}, no longer running)")
            return self._train_locked(resume)
        finally:
            if lock is not None:
                lock.release()

    def _train_locked(self, resume: str | None) -> dict[str, Any]:
        """`train`, with the work dir's lock held."""
        cfg = self.cfg
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self._remove_stale_temp_files()
        resumed = False
        if resume == "auto":
            resumed = self._resume_auto()
        elif resume:
            self.load_checkpoint(resume)
            resumed = True
        if not resumed:
            _seed_everything(cfg.seed + self.dist.rank)
            if cfg.init_from:
                self.load_checkpoint(cfg.init_from, weights_only_init=True)
        if self.dist.is_main:
            atomic_write_text(
                self.work_dir / "config.json",
                json.dumps({"train": asdict(cfg), "model": self.model.config.to_dict()}, indent=2) + "\n",
            )
        self._tb = None
        if cfg.tensorboard and self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.work_dir / "tensorboard"))

        progress = None
        if self.dist.is_main and self.show_progress:
            progress = tqdm(total=cfg.max_iters, initial=self.step, desc="train", dynamic_ncols=True)
        try:
            return self._run(progress)
        finally:
            # Also on an error (bad sample, non-finite loss): the bar ends its line before the error message.
            if progress is not None:
                progress.close()
            if self._tb is not None:
                self._tb.close()

    def _run(self, progress: Any) -> dict[str, Any]:
        """The training loop proper (`train` sets up and cleans up around it)."""
        cfg = self.cfg
        self.ddp_model.train()
        last_eval: dict[str, Any] = {}
        # window: per-key sums over the optimizer steps since the last log record (window_steps of them; fewer
        # than log_interval after a resume off the log grid or at a max_iters off the grid).
        window: dict[str, float] = {}
        micro, window_steps, t0 = 0, 0, time.perf_counter()
        for batch in self._loader():
            self._check_bad_samples(batch)
            images = batch["image"].to(self.dist.device, non_blocking=True)
            labels = batch["label"].to(self.dist.device, non_blocking=True)
            lr = poly_lr(self.step, cfg.max_iters, cfg.lr, cfg.min_lr, cfg.power, cfg.warmup_iters, cfg.warmup_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            with self._autocast():
                losses = compute_losses(
                    self.ddp_model,
                    images,
                    labels,
                    num_masks_reducer=self._num_masks_reducer,
                    config=self.model.config,
                    losses=cfg.losses,
                )
                loss = total_loss(losses) / cfg.grad_accum
            if not torch.isfinite(loss):
                self.save_failure_note(losses)
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                last = find_latest_checkpoint(self.work_dir)
                kept = f"the last good checkpoint {last} is kept" if last else f"no checkpoint in {self.work_dir} yet"
                raise FloatingPointError(
                    f"non-finite loss at step {self.step} ({parts}); {kept}: lower the learning rate or train "
                    "without --amp, then --resume auto"
                )
            self.scaler.scale(loss).backward()
            for k, v in losses.items():
                window[k] = window.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
            micro += 1
            if micro < cfg.grad_accum:
                continue
            micro = 0
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            window_steps += 1
            if progress is not None:
                progress.update(1)
                window_loss = sum(v for k, v in window.items() if "loss" in k) / window_steps
                progress.set_postfix(loss=f"{window_loss:.3f}", lr=f"{lr:.2e}")
            if self.on_step is not None and self.dist.is_main:
                self.on_step(self.step)
            if self.step % cfg.log_interval == 0 or self.step == cfg.max_iters:
                values = torch.tensor(list(window.values()), device=self.dist.device)
                values = all_reduce_mean(values) / window_steps
                record = {"step": self.step, "lr": lr, **dict(zip(window, values.tolist(), strict=True))}
                record["loss"] = sum(v for k, v in record.items() if "loss" in k and k != "loss")
                record["time_per_iter"] = (time.perf_counter() - t0) / window_steps
                self._log(record)
                window, window_steps, t0 = {}, 0, time.perf_counter()
            if self.step % cfg.checkpoint_interval == 0 or self.step == cfg.max_iters:
                self.save_checkpoint()
            if self.evaluate_fn is not None and (
                (cfg.eval_interval and self.step % cfg.eval_interval == 0) or self.step == cfg.max_iters
            ):
                last_eval = self.evaluate_fn(self.model)
                self._log({"step": self.step, **{f"eval/{k}": v for k, v in last_eval.items() if _is_number(v)}})
                self.ddp_model.train()
        self._report_skipped()
        return {"step": self.step, "eval": last_eval, "skipped_samples": self.skipped_samples}

    # ------------------------------------------------------------------ bad samples
    def _check_bad_samples(self, batch: dict[str, Any]) -> None:
        """Count/warn the bad samples of a micro-batch, or raise `BadSampleError` (on every process at once)."""
        cfg = self.cfg
        bad: list[tuple[str, str]] = batch.get("bad") or []
        reason = None
        if bad and cfg.bad_samples == "stop":
            reason = f"{bad[0][1]}; to skip such samples instead, pass --bad-samples skip (train.bad_samples=skip)"
        elif batch.get("failed"):
            reason = (
                f"{bad[-1][1] if bad else 'a bad sample'}; no readable sample among the {_MAX_REPLACEMENT_TRIES} "
                "tried in its place"
            )
        elif bad:
            for sample, message in bad:
                self.skipped_samples += 1
                if sample not in self.bad_files:  # warn and log once per file
                    self.bad_files[sample] = message
                    self._warn(f"skipping bad sample at step {self.step}: {message}")
                    self._log({"step": self.step, "skipped_sample": sample, "error": message})
            read = len(bad) + batch["requested"]
            n = len(self.train_set)
            if len(bad) / read > cfg.max_bad_fraction:
                reason = (
                    f"{len(bad)} of the {read} samples read for one batch were bad (more than "
                    f"train.max_bad_fraction={cfg.max_bad_fraction}), e.g. {bad[0][1]}"
                )
            elif len(self.bad_files) > cfg.max_bad_fraction * n:
                reason = (
                    f"{len(self.bad_files)} of the {n} training samples are bad (more than "
                    f"train.max_bad_fraction={cfg.max_bad_fraction}), e.g. {bad[0][1]}"
                )
        if self.dist.enabled:  # a process that stopped alone would leave the others waiting in a collective
            flag = torch.tensor([1.0 if reason else 0.0], device=self.dist.device)
            if float(all_reduce_mean(flag)) > 0 and reason is None:
                reason = "another process stopped on a bad training sample (see its message)"
        if reason is None:
            return
        self._report_skipped()
        last = find_latest_checkpoint(self.work_dir)
        kept = f"the last checkpoint {last} is kept" if last else "no checkpoint was written yet"
        if self.dist.is_main and bad:
            self._log({"step": self.step, "stopped_on_bad_sample": bad[0][0], "error": bad[0][1]})
        raise BadSampleError(f"training stopped at step {self.step}: {reason}; {kept}")

    def _report_skipped(self) -> None:
        """Summary of the skipped samples: a warning and a metrics.jsonl record (nothing when none)."""
        if not self.bad_files:
            return
        names = sorted(self.bad_files)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        self._warn(f"skipped {self.skipped_samples} time(s) {len(names)} bad sample(s): {shown}")
        self._log({"step": self.step, "skipped_samples": self.skipped_samples, "bad_samples": names})

    def save_failure_note(self, losses: dict[str, Tensor]) -> None:
        if self.dist.is_main:
            note = {"step": self.step, "losses": {k: float(v.detach()) for k, v in losses.items()}}
            atomic_write_text(self.work_dir / "nonfinite_loss.json", json.dumps(note, indent=2) + "\n")


class _UnreadableCheckpoint(ValueError):
    """The checkpoint file itself cannot be read (truncated, corrupt, holds pickled objects)."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_to_plain(rng: dict[str, Any]) -> dict[str, Any]:
    """RNG states as tensors / lists / ints only, so checkpoints load with weights_only=True."""
    py = rng["python"]
    np_state = rng["numpy"]
    out = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
        "torch": rng["torch"],
    }
    if "cuda" in rng:
        out["cuda"] = rng["cuda"]
    return out


def _plain(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def _restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), *npst[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
