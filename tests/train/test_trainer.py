"""The trainer on a tiny model and an in-memory dataset: learning, checkpoints, exact resume, bad losses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import otseg.ops.mps as mps_module
from otseg import OTSeg
from otseg.config import HeadConfig, ModelConfig, Setting, TrainConfig, VisionConfig
from otseg.train.schedule import poly_lr
from otseg.train.trainer import StepBatchSampler, Trainer, find_latest_checkpoint

CLASSES = ("red", "green", "blue", "yellow")


class SquaresDataset(torch.utils.data.Dataset):
    """Images of coloured squares on grey; label = the square's colour class, 255 elsewhere."""

    colors = np.array([[220, 30, 30], [30, 200, 30], [30, 30, 220], [220, 220, 30]], np.float32)

    def __init__(self, n: int = 12, size: int = 32) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def get(self, index: int, rng: np.random.Generator) -> dict:
        g = np.random.default_rng(index)
        img = np.full((self.size, self.size, 3), 128, np.float32)
        label = np.full((self.size, self.size), 255, np.int64)
        for c in g.choice(len(CLASSES), 2, replace=False):
            y, x = g.integers(0, self.size - 12, 2)
            img[y : y + 12, x : x + 12] = self.colors[c]
            label[y : y + 12, x : x + 12] = c
        if rng.random() < 0.5:  # augmentation drawn from the per-sample generator
            img, label = img[:, ::-1].copy(), label[:, ::-1].copy()
        image = torch.from_numpy((img - 128) / 64).permute(2, 0, 1).float()
        return {"image": image, "label": torch.from_numpy(label), "path": f"sample_{index}"}

    def __getitem__(self, index: int) -> dict:
        return self.get(index, np.random.default_rng(0))


def tiny_model(setting: Setting = "inductive") -> OTSeg:
    torch.manual_seed(0)
    cfg = ModelConfig(
        name="tiny",
        setting=setting,
        vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2, output_dim=16,
                            num_prompt_tokens=2, deep_prompt_layers=1),
        head=HeadConfig(embed_dim=16, num_layers=2, num_heads=2, ffn_dim=32, output_size=32),
        class_names=CLASSES,
        unseen_classes=(3,),
        templates="templates_1",
        crop_size=32,
        stride=24,
    )  # fmt: skip
    model = OTSeg(cfg)
    model.set_class_embeddings(F.normalize(torch.randn(4, 1, 16), dim=-1))
    return model


def train_cfg(**kw) -> TrainConfig:
    base = dict(max_iters=8, batch_size=2, lr=5e-3, warmup_iters=2, num_workers=0, log_interval=2,
                checkpoint_interval=4, seed=3)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_loss_decreases_and_checkpoints_are_written(tmp_path):
    trainer = Trainer(tiny_model(), SquaresDataset(), train_cfg(max_iters=30, checkpoint_interval=10), tmp_path)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 15 and np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    assert sorted(p.name for p in tmp_path.glob("iter_*.pt")) == ["iter_20.pt", "iter_30.pt"]  # keep 2
    assert find_latest_checkpoint(tmp_path).name == "iter_30.pt"
    assert (tmp_path / "last_checkpoint").read_text().strip() == "iter_30.pt"
    ckpt = torch.load(tmp_path / "iter_30.pt", weights_only=True)  # loads without pickle
    assert ckpt["step"] == 30 and "optimizer" in ckpt and "rng" in ckpt


@pytest.mark.parametrize("setting", ["inductive", "transductive"])
def test_resume_auto_gives_the_same_weights(tmp_path, setting):
    full = Trainer(tiny_model(setting), SquaresDataset(), train_cfg(), tmp_path / "full")
    full.train()

    def crash(model):  # the process dies right after the step-4 checkpoint was written
        raise SystemExit("killed")

    part = Trainer(tiny_model(setting), SquaresDataset(), train_cfg(eval_interval=4), tmp_path / "part", crash)
    with pytest.raises(SystemExit):
        part.train()
    assert find_latest_checkpoint(tmp_path / "part").name == "iter_4.pt"
    resumed = Trainer(tiny_model(setting), SquaresDataset(), train_cfg(), tmp_path / "part")
    resumed.train(resume="auto")
    assert resumed.step == 8
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_gradient_accumulation_sees_the_same_samples_per_step(tmp_path):
    # Two micro-batches of 2 cover exactly the samples of one batch of 4 (the loss normaliser, the number of
    # present masks, is per micro-batch, so the update itself is not bit-equal to the big batch).
    big = list(StepBatchSampler(12, 4, 1, 0, 1, 0, 3, seed=3))
    micro = list(StepBatchSampler(12, 2, 1, 0, 2, 0, 3, seed=3))
    assert [sorted(b) for b in big] == [sorted(micro[2 * i] + micro[2 * i + 1]) for i in range(3)]
    trainer = Trainer(tiny_model(), SquaresDataset(), train_cfg(max_iters=3, grad_accum=2), tmp_path)
    trainer.train()
    assert trainer.step == 3


def test_only_trainable_parameters_change(tmp_path):
    model = tiny_model()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    Trainer(model, SquaresDataset(), train_cfg(max_iters=2), tmp_path).train()
    assert frozen and all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    model = tiny_model()
    trainer = Trainer(model, SquaresDataset(), train_cfg(max_iters=6, checkpoint_interval=2), tmp_path)
    original_forward = model.forward
    calls = {"n": 0}

    def poisoned(images, text=None, **kwargs):
        calls["n"] += 1
        out = original_forward(images, text, **kwargs)
        if calls["n"] > 3:
            out.decoder_logits = out.decoder_logits * float("nan")
        return out

    model.forward = poisoned
    with pytest.raises(FloatingPointError, match="step 3"):
        trainer.train()
    assert (tmp_path / "iter_2.pt").is_file()
    assert json.loads((tmp_path / "nonfinite_loss.json").read_text())["step"] == 3


def test_poly_schedule_matches_the_reference_formula():
    lr0 = poly_lr(0, 20000, 2e-4)
    assert lr0 == pytest.approx(((2e-4 - 1e-6) * 1 + 1e-6) * 1e-6)
    mid = poly_lr(750, 20000, 2e-4)
    regular = (2e-4 - 1e-6) * (1 - 750 / 20000) ** 0.9 + 1e-6
    assert mid == pytest.approx(regular * (1e-6 + (1 - 1e-6) * 0.5))
    assert poly_lr(10000, 20000, 2e-4) == pytest.approx((2e-4 - 1e-6) * 0.5**0.9 + 1e-6)
    assert poly_lr(20000, 20000, 2e-4) == pytest.approx(1e-6)


def test_sampler_splits_positions_across_ranks_and_resumes():
    single = list(StepBatchSampler(10, 4, 1, 0, 1, 0, 5, seed=1))
    ranks = [list(StepBatchSampler(10, 2, 2, r, 1, 0, 5, seed=1)) for r in (0, 1)]
    for step in range(5):
        merged = sorted(ranks[0][step] + ranks[1][step])
        assert merged == sorted(single[step])
    assert list(StepBatchSampler(10, 4, 1, 0, 1, 3, 5, seed=1)) == single[3:]


def test_bf16_autocast_trains_with_sinkhorn_in_float32(tmp_path, monkeypatch):

    seen_dtypes = []
    original = mps_module.sinkhorn

    def spy(cost, *args, **kwargs):
        plan = original(cost, *args, **kwargs)
        seen_dtypes.append(plan.dtype)
        return plan

    monkeypatch.setattr(mps_module, "sinkhorn", spy)
    trainer = Trainer(tiny_model(), SquaresDataset(), train_cfg(max_iters=3, amp="bf16"), tmp_path)
    trainer.train()
    assert trainer.step == 3 and seen_dtypes and set(seen_dtypes) == {torch.float32}
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_backbone_lr_multiplier_scales_the_prompts_lr_only(tmp_path) -> None:
    seen: list[dict[int, float]] = []  # number of parameters in the group -> its lr

    class Spy(Trainer):
        def save_checkpoint(self):
            seen.append({len(g["params"]): g["lr"] for g in self.optimizer.param_groups})
            return super().save_checkpoint()

    model = tiny_model()
    prompts = sum(1 for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone."))
    head = sum(1 for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone."))
    assert prompts and head
    Spy(model, SquaresDataset(), train_cfg(max_iters=4, power=0.0, backbone_lr_mult=0.1), tmp_path).train()
    last = seen[-1]
    assert set(last) == {prompts, head} and last[prompts] == pytest.approx(0.1 * last[head])
    # The reference's setting (multiplier 1) keeps one group, so its checkpoints and runs are unchanged.
    one = Trainer(tiny_model(), SquaresDataset(), train_cfg(max_iters=1), tmp_path / "one")
    assert len(one.optimizer.param_groups) == 1
