"""Iteration-based trainer: AdamW + poly schedule, autocast, gradient accumulation, DDP, atomic resumable
checkpoints, JSONL metrics (TensorBoard optional), tqdm progress on rank 0.

One optimizer step computes the reference's update on `global_batch` images whatever the decomposition into
processes and micro-batches (`otseg.train.batching`): the same images per group (`otseg.train.sampling`), the
Sinkhorn's stopping test per group of `sinkhorn_stop_group` images (the reference's images per GPU), and the
reference's loss normalisation, the summed loss divided by the number of present masks averaged over the
reference's GPUs (here: over the step's world_size x grad_accum micro-batches), clamped at 1. Without
accumulation the count is all-reduced inside the forward, as the reference does; with it, the count of later
micro-batches is unknown at an earlier one's backward (and, self-training, depends on pseudo-labels of the
forward), so each micro-batch backpropagates its unnormalised sum and the gradients are scaled once per step.

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

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from otseg.config import TrainConfig
from otseg.distributed import DistInfo, all_reduce_mean, all_reduce_sum, barrier
from otseg.errors import BadFileError, BadValueError, MissingFileError, NonFiniteLossError
from otseg.formats.state_dict import check_state_dict_fits
from otseg.model.segmentor import OTSeg
from otseg.model_files.training_checkpoint import (
    UnreadableCheckpointError,
    UnverifiedCheckpointError,
    read_training_checkpoint,
    training_checkpoint,
    verify_training_checkpoint,
    write_training_checkpoint,
)
from otseg.ops.sinkhorn_options import SinkhornOptions
from otseg.train.batching import resolve_batch
from otseg.train.lock import WorkDirLock
from otseg.train.objective import compute_losses, total_loss
from otseg.train.rng_state import capture_rng_state, restore_rng_state, seed_everything
from otseg.train.run_record import RunInputs, build_run_record, write_run_record
from otseg.train.sampling import (
    MAX_REPLACEMENT_TRIES,
    SeededDataset,
    SizedDataset,
    StepBatchSampler,
    collate_samples,
)
from otseg.train.schedule import build_optimizer, poly_lr
from otseg.utils import atomic_write_text, describe_write_failure, is_atomic_temp_file

__all__ = [
    "BadSampleError",
    "StepBatchSampler",
    "Trainer",
    "find_latest_checkpoint",
]

CKPT_PATTERN = re.compile(r"^iter_(\d+)\.pt$")


class BadSampleError(BadValueError):
    """A training sample could not be read or failed its checks, and training stopped."""


def find_latest_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    """The `iter_N.pt` with the largest N in `work_dir`, or None."""
    d = Path(work_dir)
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_PATTERN.match(p.name))]
    return max(found)[1] if found else None


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

    def forward(self, images: Tensor, text: Tensor | None = None, **kwargs: Any) -> Any:
        out = self.model(images, text, **kwargs)
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


class Trainer:
    """Trains an `otseg.OTSeg` in its configured setting (inductive, transductive or fully supervised).

    Args:
        model: the segmentor (with class embeddings set and CLIP weights loaded).
        train_set: dataset of dicts {"image": (3, H, W) float, "label": (H, W) int64}, all the same crop size;
            if it has `get(index, rng)`, augmentation draws from the per-sample generator.
        cfg: optimisation settings; its derived fields (grad_accum, world_size) are filled from the process
            count (`otseg.train.batching.resolve_batch`: a global batch they cannot divide is a ValueError).
        work_dir: receives `iter_N.pt` checkpoints, `last_checkpoint` (name of the newest), `metrics.jsonl`,
            `config.json`.
        evaluate: optional callback `evaluate(model) -> dict` run every `cfg.eval_interval` steps and at the end.
        dist_info: from `init_distributed()`; single process by default.
        progress: show a tqdm bar (on rank 0).
        on_step: optional callback `on_step(step)` after every optimizer step (on rank 0), e.g. to drive a
            progress display of several runs.
        run_inputs: the files the run started from (CLIP weights, class embeddings, data), for `run.json`.

    Set `trust_unverified = True` (`otseg train --trust-unverified`) to resume from, or start from, a checkpoint that
    carries no digest of what it is used for (written by an older otseg); by default such a file is refused.
    """

    trust_unverified: bool = False

    def __init__(
        self,
        model: OTSeg,
        train_set: SizedDataset,
        cfg: TrainConfig,
        work_dir: str | os.PathLike,
        evaluate: Callable[[OTSeg], dict[str, Any]] | None = None,
        dist_info: DistInfo | None = None,
        progress: bool = True,
        on_step: Callable[[int], None] | None = None,
        run_inputs: RunInputs | None = None,
    ) -> None:
        if cfg.bad_samples not in ("stop", "skip"):
            raise BadValueError(f"train.bad_samples must be 'stop' or 'skip', got {cfg.bad_samples!r}")
        if not 0.0 < cfg.max_bad_fraction <= 1.0:
            raise BadValueError(f"train.max_bad_fraction must be in (0, 1], got {cfg.max_bad_fraction}")
        self.dist = dist_info or DistInfo(
            device=torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        )
        self.cfg = cfg = resolve_batch(cfg, self.dist.world_size)
        self.sinkhorn_options = SinkhornOptions(cfg.sinkhorn_backward, cfg.sinkhorn_stop_group or None)
        # This step's present-mask counts, one per micro-batch (the deferred normalisation of grad_accum > 1).
        self._step_masks: list[Tensor] = []
        self.work_dir = Path(work_dir)
        self.model = model.to(self.dist.device)
        self.model.backbone.checkpoint_blocks = cfg.checkpoint_backbone
        self.train_set = train_set
        self.evaluate_fn = evaluate
        self.show_progress = progress
        self.on_step = on_step
        self.run_inputs = run_inputs
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
        return training_checkpoint(
            step=self.step,
            model_state=self._trainable_state(),
            class_embeddings=self.model.class_embeddings.detach().cpu(),
            class_names=list(self.model.class_names),
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=capture_rng_state(),
            train_config=asdict(self.cfg),
            model_config=self.model.config.to_dict(),
        )

    def save_checkpoint(self) -> Path | None:
        """Write `iter_{step}.pt` atomically (rank 0), then prune old ones. Returns the path on rank 0."""
        path = None
        if self.dist.is_main:
            path = self.work_dir / f"iter_{self.step}.pt"
            write_training_checkpoint(self.checkpoint_state(), path)
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
            raise MissingFileError(f"checkpoint {p} does not exist")
        try:
            ckpt = read_training_checkpoint(p, required=("model", "optimizer", "scaler", "step", "rng"))
        except UnreadableCheckpointError as e:
            raise _UnreadableCheckpoint(str(e)) from e
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
            use = "weights" if weights_only_init else "resume"
            verify_training_checkpoint(ckpt, f"checkpoint {p}", use, self.trust_unverified)  # type: ignore[arg-type]
        except UnverifiedCheckpointError:
            raise  # not damaged: an older or foreign file, which only the user can decide to trust
        except ValueError as e:
            raise _UnreadableCheckpoint(str(e)) from None
        self.model.load_state_dict(state, strict=False)  # strict=False: the frozen text tower is never saved
        if weights_only_init:
            return
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise BadValueError(
                f"checkpoint {p}: its optimizer state does not fit this model's trainable parameters ({e}); "
                "to start a new run from its weights use --init-from instead of --resume"
            ) from e
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        restore_rng_state(ckpt["rng"])

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
            SeededDataset(self.train_set, skip_bad=self.cfg.bad_samples == "skip"),
            batch_sampler=sampler,
            num_workers=self.cfg.num_workers,
            collate_fn=collate_samples,
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

    def _defer_num_masks(self, count: Tensor) -> Tensor:
        """With accumulation: keep the count for the step's end, and leave this micro-batch's loss unnormalised."""
        self._step_masks.append(count.detach().float())
        return torch.ones((), device=count.device)

    def _normalise_gradients(self) -> float:
        """End of an accumulated step: the reference's normaliser over all micro-batches of the step, applied once.

        The gradients hold sum_g grad(sum_g / B) over this process's micro-batches g (averaged over processes by
        DDP; B = batch_size); the reference's update is (1/W') sum_g grad(sum_g) / max(count / W', 1), W' =
        world_size x grad_accum micro-batches, count = the present masks of the whole step. Returns the factor of
        the sums, 1 / (grad_accum x max(count / W', 1)), which also normalises the logged losses.
        """
        accum = self.cfg.grad_accum
        count = all_reduce_sum(torch.stack(self._step_masks).sum())
        self._step_masks.clear()
        num_masks = float((count / (self.dist.world_size * accum)).clamp(min=1))
        factor = 1.0 / (accum * num_masks)
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.mul_(factor * self.cfg.batch_size)
        return factor

    def _sync_context(self, last_micro: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP's gradient all-reduce on the last micro-batch of a step only (the sums are what is averaged)."""
        ddp = self.ddp_model
        if not last_micro and isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
            return ddp.no_sync()
        return contextlib.nullcontext()

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        path = self.work_dir / "metrics.jsonl"
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: name the file, not only "[Errno 28]"
            raise BadFileError(f"cannot write {path}: {describe_write_failure(e, self.work_dir)}") from None
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
            seed_everything(cfg.seed + self.dist.rank)
            if cfg.init_from:
                self.load_checkpoint(cfg.init_from, weights_only_init=True)
        if self.dist.is_main:
            atomic_write_text(
                self.work_dir / "config.json",
                json.dumps({"train": asdict(cfg), "model": self.model.config.to_dict()}, indent=2) + "\n",
            )
        if self.dist.is_main:  # run.json: versions, device, batch decomposition, digests (otseg.train.run_record)
            record = build_run_record(
                cfg, self.model, self.dist, self.work_dir, self.run_inputs, self.step, self.sinkhorn_options
            )
            write_run_record(self.work_dir, record)
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
        deferred = cfg.grad_accum > 1
        step_values: dict[str, float] = {}  # this step's loss terms (unnormalised sums when deferred)
        self._step_masks.clear()
        for batch in self._loader():
            self._check_bad_samples(batch)
            images = batch["image"].to(self.dist.device, non_blocking=True)
            labels = batch["label"].to(self.dist.device, non_blocking=True)
            lr = poly_lr(self.step, cfg.max_iters, cfg.lr, cfg.min_lr, cfg.power, cfg.warmup_iters, cfg.warmup_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            with self._sync_context(micro + 1 == cfg.grad_accum):
                with self._autocast():
                    losses = compute_losses(
                        self.ddp_model,
                        images,
                        labels,
                        num_masks_reducer=self._defer_num_masks if deferred else self._num_masks_reducer,
                        config=self.model.config,
                        sinkhorn_options=self.sinkhorn_options,
                        losses=cfg.losses,
                    )
                    loss = total_loss(losses)
                    if deferred:  # a sum over masks: per image, it stays in the range of a normalised loss (fp16)
                        loss = loss / cfg.batch_size
                if not torch.isfinite(loss):
                    self._stop_on_non_finite(losses)
                self.scaler.scale(loss).backward()
            for k, v in losses.items():
                step_values[k] = step_values.get(k, 0.0) + float(v.detach())
            micro += 1
            if micro < cfg.grad_accum:
                continue
            micro = 0
            # Loss terms: normalised as the gradients (already in the forward without accumulation); other
            # values (accuracy): the mean over micro-batches.
            loss_factor = self._normalise_gradients() if deferred else 1.0
            for k, summed in step_values.items():
                window[k] = window.get(k, 0.0) + summed * (loss_factor if "loss" in k else 1.0 / cfg.grad_accum)
            step_values = {}
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
                f"{bad[-1][1] if bad else 'a bad sample'}; no readable sample among the {MAX_REPLACEMENT_TRIES} "
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

    def _stop_on_non_finite(self, losses: dict[str, Tensor]) -> None:
        self.save_failure_note(losses)
        parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
        last = find_latest_checkpoint(self.work_dir)
        kept = f"the last good checkpoint {last} is kept" if last else f"no checkpoint in {self.work_dir} yet"
        raise NonFiniteLossError(
            f"non-finite loss at step {self.step} ({parts}); {kept}: lower the learning rate or train without "
            "--amp, then --resume auto"
        )

    def save_failure_note(self, losses: dict[str, Tensor]) -> None:
        if self.dist.is_main:
            note = {"step": self.step, "losses": {k: float(v.detach()) for k, v in losses.items()}}
            atomic_write_text(self.work_dir / "nonfinite_loss.json", json.dumps(note, indent=2) + "\n")


class _UnreadableCheckpoint(BadValueError):
    """The checkpoint file itself cannot be read (truncated, corrupt, holds pickled objects)."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))
