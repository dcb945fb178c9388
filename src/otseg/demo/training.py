"""One demo training run: the world's datasets through the regular loader, and a model trained by the regular
`Trainer` from the tiny CLIP. `otseg demo` runs six of these; the built-in demo model is one of them."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from otseg.config import ModelConfig, Setting
from otseg.data.datasets import SegmentationDataset, build_custom
from otseg.data.transforms import TestTransform, TrainTransform
from otseg.demo.presets import DemoSettings, demo_data_config, demo_model_config, demo_train_config, training_arch
from otseg.demo.world import CLASS_NAMES
from otseg.model.build import load_clip_into
from otseg.model.segmentor import OTSeg
from otseg.train.trainer import CKPT_PATTERN, Trainer, find_latest_checkpoint

__all__ = ["build_demo_model", "demo_datasets", "demo_holdout_set", "logged_evaluations", "train_demo_model"]

# Every split of the world is read many times (each image about 20 times in training, the test and held-out sets
# at each evaluation) and decoding its 64 px PNGs cost about a tenth of a training step: keep them decoded. A
# split of the default world is under 10 MB; the budget bounds a larger world.
SPLIT_CACHE_BYTES = 64 * 2**20


def demo_datasets(
    cfg: DemoSettings, root: Path, cache_bytes: int = SPLIT_CACHE_BYTES
) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The world's training set (the demo augmentation) and test set, through the regular custom-layout loader;
    each keeps up to `cache_bytes` of decoded samples in memory (`SegmentationDataset`)."""
    data_cfg = demo_data_config(demo_model_config("otseg", "inductive", cfg.world, cfg.clip))
    train_set = build_custom(root, "train", TrainTransform(data_cfg), seed=cfg.world.seed, cache_bytes=cache_bytes)
    val_set = build_custom(root, "val", TestTransform(data_cfg), cache_bytes=cache_bytes)
    return train_set, val_set


def demo_holdout_set(cfg: DemoSettings, root: Path, cache_bytes: int = SPLIT_CACHE_BYTES) -> SegmentationDataset:
    """The held-out validation split (seen classes only, never trained on): the training curves' data."""
    data_cfg = demo_data_config(demo_model_config("otseg", "inductive", cfg.world, cfg.clip))
    return build_custom(root, "holdout", TestTransform(data_cfg), cache_bytes=cache_bytes)


# The trainer's own files in a demo run's folder are small (config.json, a few hundred metrics records); a larger
# one is not from a demo run and is not read.
_MAX_LOG_BYTES = 16 * 2**20


def _same_run_config(work: Path, expected: dict[str, Any]) -> bool:
    """Whether `work/config.json` (written by the trainer) is the config of the run about to start."""
    path = work / "config.json"
    try:
        if path.stat().st_size > _MAX_LOG_BYTES:
            return False
        return bool(json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(expected)))
    except (OSError, ValueError):
        return False


def logged_evaluations(work: Path) -> dict[int, dict[str, float]]:
    """The evaluations the trainer logged in `work/metrics.jsonl`: by step, the `eval/<name>` values under their
    names (the last record of a step wins); empty when there is no log or it is too large to be a demo run's."""
    path = work / "metrics.jsonl"
    found: dict[int, dict[str, float]] = {}
    try:
        if path.stat().st_size > _MAX_LOG_BYTES:
            return found
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            record = json.loads(line)
            step = int(record["step"])
            values = {k[len("eval/") :]: float(v) for k, v in record.items() if k.startswith("eval/")}
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        if values and all(math.isfinite(v) for v in values.values()):
            found[step] = values
    return found


def build_demo_model(
    cfg: DemoSettings,
    method: str,
    setting: Setting,
    clip_state: dict[str, torch.Tensor],
    model_config: ModelConfig | None = None,
) -> OTSeg:
    """An untrained demo model of `method` in `setting`: its head and prompts initialised from the world's seed, the
    tiny CLIP loaded (text tower attached), classes set to the world's 16.

    `model_config` replaces the method's own (`demo_model_config`) when a bench changes one part of it (an
    ablation); the demo itself never passes it."""
    torch.manual_seed(cfg.world.seed)  # the head and prompt initialisation
    model = OTSeg(model_config or demo_model_config(method, setting, cfg.world, cfg.clip))
    load_clip_into(model, clip_state)
    model.set_classes(CLASS_NAMES)
    return model


def train_demo_model(
    cfg: DemoSettings,
    method: str,
    setting: Setting,
    clip_state: dict[str, torch.Tensor],
    train_set: Any,
    work: Path,
    init_from: str | None = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    evaluate: Callable[[Any], dict[str, Any]] | None = None,
    on_resume: Callable[[int], None] | None = None,
    model_config: ModelConfig | None = None,
) -> OTSeg:
    """Build one demo model from the tiny CLIP and train it with the regular `Trainer` in `work`.

    `evaluate(model)` runs `recipe.eval_points` times during training (and at its end), each time after a
    checkpoint. When `work` holds a checkpoint of this very run (its `config.json` is this run's: an earlier attempt
    was interrupted), training resumes from the newest one, and gives the same model as an uninterrupted run;
    `on_resume(step)` is called first, and `on_step(step)` with that step. Otherwise `work` is emptied and the run
    starts fresh. Returns the trained `OTSeg` (its text tower attached, classes set to the world's 16).
    `model_config`: as `build_demo_model`'s (the training recipe stays `method`'s).
    """
    model = build_demo_model(cfg, method, setting, clip_state, model_config)
    train_cfg = demo_train_config(training_arch(method), setting, cfg.recipe, seed=cfg.world.seed, init_from=init_from)
    if evaluate is not None:
        eval_interval = max(train_cfg.max_iters // max(cfg.recipe.eval_points, 1), 1)
        # A checkpoint at each evaluation too, so that an interrupted run resumes from the last one; the one at
        # half an inductive schedule, where the transductive run starts, is kept.
        train_cfg = replace(
            train_cfg,
            eval_interval=eval_interval,
            keep_every=train_cfg.checkpoint_interval if setting == "inductive" else 0,
            checkpoint_interval=math.gcd(train_cfg.checkpoint_interval, eval_interval),
        )
    this_run = {"train": asdict(train_cfg), "model": model.config.to_dict()}  # as the trainer writes it
    resume_from = find_latest_checkpoint(work) if _same_run_config(work, this_run) else None
    if resume_from is not None and train_cfg.keep_every:
        # The checkpoints kept for later (an inductive run's half-way one, where its transductive run starts) must
        # all be there up to the resume point; if one was removed, train again from the start to make it.
        match = CKPT_PATTERN.match(resume_from.name)
        last = int(match.group(1)) if match else 0
        kept = range(train_cfg.keep_every, last + 1, train_cfg.keep_every)
        if not all((work / f"iter_{k}.pt").is_file() for k in kept):
            resume_from = None
    if resume_from is None:
        shutil.rmtree(work, ignore_errors=True)  # a fresh run, never a resume of another run's files
    trainer = Trainer(model, train_set, train_cfg, work, evaluate=evaluate, progress=progress, on_step=on_step)
    if resume_from is not None:
        try:
            trainer.load_checkpoint(resume_from)  # here, to know its step before training goes on from it
        except ValueError:  # unreadable (cut short, damaged): start afresh, in an emptied folder
            shutil.rmtree(work, ignore_errors=True)
            return train_demo_model(
                cfg,
                method,
                setting,
                clip_state,
                train_set,
                work,
                init_from,
                progress,
                on_step,
                evaluate,
                on_resume,
                model_config,
            )
        step = trainer.step
        if on_resume is not None:
            on_resume(step)
        if on_step is not None:
            on_step(step)
        interval = train_cfg.eval_interval
        evaluated_here = bool(interval and step % interval == 0) or step == train_cfg.max_iters
        if evaluate is not None and evaluated_here and step not in logged_evaluations(work):
            # Interrupted between that checkpoint and its evaluation: evaluate the same weights now.
            evaluate(model)
            model.train()
    trainer.train(resume=None if resume_from is None else str(resume_from))
    return model
