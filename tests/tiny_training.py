"""A tiny trainable model and dataset for tests that need a real training run in seconds (checkpoints, resume,
digests): imported as `from tiny_training import ...` (tests/ is on sys.path through the rootdir conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from otseg import OTSeg
from otseg.config import HeadConfig, ModelConfig, TrainConfig, VisionConfig
from otseg.train.trainer import Trainer

CLASSES = ("red", "green", "blue", "yellow")


def tiny_model(width: int = 32, classes: tuple[str, ...] = CLASSES, **fields: Any) -> OTSeg:
    """A seeded 32-pixel OTSeg whose last class is unseen, with random unit class embeddings; `fields` replace or
    add `ModelConfig` fields (e.g. `setting`, `unseen_classes`, `dataset`, `test_short_side`)."""
    torch.manual_seed(0)
    config = dict(
        name="tiny-ckpt",
        vision=VisionConfig(image_size=32, patch_size=8, width=width, layers=2, heads=2, output_dim=16,
                            num_prompt_tokens=2, deep_prompt_layers=1),
        head=HeadConfig(embed_dim=16, num_layers=2, num_heads=2, ffn_dim=32, output_size=32),
        class_names=classes,
        unseen_classes=(len(classes) - 1,),
        templates="templates_1",
        crop_size=32,
        stride=24,
    )  # fmt: skip
    model = OTSeg(ModelConfig(**{**config, **fields}))
    model.set_class_embeddings(F.normalize(torch.randn(len(classes), 1, 16), dim=-1))
    return model


class Blocks(torch.utils.data.Dataset):
    """Random-coloured blocks; the label is the block's class (deterministic per index and generator)."""

    def __len__(self) -> int:
        return 8

    def get(self, index: int, rng: np.random.Generator) -> dict:
        g = np.random.default_rng(index)
        label = np.full((32, 32), 255, np.int64)
        c, y, x = int(g.integers(0, 4)), *g.integers(0, 20, 2)
        label[y : y + 12, x : x + 12] = c
        image = torch.from_numpy(np.stack([label == k for k in range(3)]).astype(np.float32))
        if rng.random() < 0.5:
            image, label = image.flip(-1), label[:, ::-1].copy()
        return {"image": image, "label": torch.from_numpy(label)}

    def __getitem__(self, index: int) -> dict:
        return self.get(index, np.random.default_rng(0))


def train_cfg(**kw) -> TrainConfig:
    base = dict(max_iters=4, global_batch=2, batch_size=2, lr=1e-3, warmup_iters=1, num_workers=0, log_interval=2,
                checkpoint_interval=2, seed=0)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def trained_checkpoint(work_dir: Path, max_iters: int = 2, model: OTSeg | None = None) -> Path:
    """The last checkpoint of `max_iters` steps of `model` (default: `tiny_model()`) on `Blocks`."""
    Trainer(tiny_model() if model is None else model, Blocks(), train_cfg(max_iters=max_iters), work_dir).train()
    return work_dir / f"iter_{max_iters}.pt"
