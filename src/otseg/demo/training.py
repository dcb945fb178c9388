"""One demo training run: the world's datasets through the regular loader, and a model trained by the regular
`Trainer` from the tiny CLIP. `otseg demo` runs six of these; the built-in demo model is one of them."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from otseg.config import Setting
from otseg.data.datasets import SegmentationDataset, build_custom
from otseg.data.transforms import TestTransform, TrainTransform
from otseg.demo.presets import DemoSettings, demo_data_config, demo_model_config, demo_train_config, training_arch
from otseg.demo.world import CLASS_NAMES
from otseg.model.build import load_clip_into
from otseg.model.segmentor import OTSeg
from otseg.train.trainer import Trainer

__all__ = ["demo_datasets", "demo_holdout_set", "train_demo_model"]

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
) -> OTSeg:
    """Build one demo model from the tiny CLIP and train it with the regular `Trainer` in `work` (fresh).

    `evaluate(model)` runs `recipe.eval_points` times during training (and at its end).
    Returns the trained `OTSeg` (its text tower attached, classes set to the world's 16).
    """
    model_cfg = demo_model_config(method, setting, cfg.world, cfg.clip)
    torch.manual_seed(cfg.world.seed)  # the head and prompt initialisation
    model = OTSeg(model_cfg)
    load_clip_into(model, clip_state)
    model.set_classes(CLASS_NAMES)
    train_cfg = demo_train_config(training_arch(method), setting, cfg.recipe, seed=cfg.world.seed, init_from=init_from)
    shutil.rmtree(work, ignore_errors=True)  # a fresh run, never a silent resume of an older one
    if evaluate is not None:
        train_cfg.eval_interval = max(train_cfg.max_iters // max(cfg.recipe.eval_points, 1), 1)
    Trainer(model, train_set, train_cfg, work, evaluate=evaluate, progress=progress, on_step=on_step).train()
    return model
