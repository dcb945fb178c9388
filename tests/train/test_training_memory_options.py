"""The trainer's memory options (`train.losses`, `train.checkpoint_backbone`) change memory and time, not training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_lean_losses import tiny_model

from otseg.config import TrainConfig
from otseg.train.trainer import Trainer


class BlocksDataset(torch.utils.data.Dataset):
    """32 px images of coloured blocks; labels 0..4, with an ignore band."""

    def __len__(self) -> int:
        return 6

    def get(self, index: int, rng: np.random.Generator) -> dict:
        g = torch.Generator().manual_seed(index)
        label = torch.randint(0, 5, (4, 4), generator=g).repeat_interleave(8, 0).repeat_interleave(8, 1)
        label[:6] = 255
        colours = torch.rand(6, 3, generator=g)
        image = colours[label.clamp(max=5)].permute(2, 0, 1) + 0.1 * torch.randn(3, 32, 32, generator=g)
        return {"image": image, "label": label, "path": f"sample_{index}"}

    def __getitem__(self, index: int) -> dict:
        return self.get(index, np.random.default_rng(0))


@pytest.mark.parametrize("setting", ["inductive", "transductive"])
def test_lean_losses_and_checkpointing_train_the_same_weights(tmp_path, setting) -> None:
    base = dict(max_iters=3, batch_size=2, lr=5e-3, warmup_iters=1, num_workers=0, checkpoint_interval=3, seed=1)
    runs = {
        "dense": TrainConfig(**base, losses="dense"),  # type: ignore[arg-type]
        "lean": TrainConfig(**base),  # type: ignore[arg-type]
        "lean+checkpointing": TrainConfig(**base, checkpoint_backbone=True),  # type: ignore[arg-type]
    }
    start = {k: v.clone() for k, v in tiny_model(setting).state_dict().items()}
    weights = {}
    for name, cfg in runs.items():
        trainer = Trainer(tiny_model(setting), BlocksDataset(), cfg, tmp_path / name, progress=False)
        trainer.train()
        weights[name] = trainer.model.state_dict()
        saved = json.loads((tmp_path / name / "config.json").read_text())["train"]
        assert (saved["losses"], saved["checkpoint_backbone"]) == (cfg.losses, cfg.checkpoint_backbone)
    moved = sum(float((weights["dense"][k] - start[k]).norm()) for k in start)
    assert moved > 0
    for name in ("lean", "lean+checkpointing"):
        diff = sum(float((weights[name][k] - weights["dense"][k]).norm()) for k in start)
        assert diff <= 1e-6 * moved, (name, diff, moved)
