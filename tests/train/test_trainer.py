"""The trainer on a tiny model and an in-memory dataset: learning, checkpoints, exact resume, bad losses."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import otseg.ops.mps as mps_module
from otseg import OTSeg
from otseg.config import HeadConfig, ModelConfig, Setting, TrainConfig, VisionConfig
from otseg.ops import SinkhornOptions, record_sinkhorn_calls
from otseg.ops.sinkhorn_options import SinkhornBackward
from otseg.train.objective import compute_losses, total_loss
from otseg.train.sampling import SeededDataset, collate_samples
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


def tiny_model(setting: Setting = "inductive", dropout: bool = True, prompts: int = 1) -> OTSeg:
    torch.manual_seed(0)
    p = 0.1 if dropout else 0.0
    cfg = ModelConfig(
        name="tiny",
        setting=setting,
        vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2, output_dim=16,
                            num_prompt_tokens=2, deep_prompt_layers=1, prompt_dropout=p),
        head=HeadConfig(embed_dim=16, num_layers=2, num_heads=2, ffn_dim=32, output_size=32, dropout=p,
                        attn_dropout=p),
        class_names=CLASSES,
        unseen_classes=(3,),
        templates=f"templates_{prompts}",
        crop_size=32,
        stride=24,
    )  # fmt: skip
    model = OTSeg(cfg)
    model.set_class_embeddings(F.normalize(torch.randn(4, prompts, 16), dim=-1))
    return model


def train_cfg(**kw) -> TrainConfig:
    base = dict(max_iters=8, global_batch=2, batch_size=2, lr=5e-3, warmup_iters=2, num_workers=0, log_interval=2,
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


@pytest.mark.parametrize(("setting", "batch_size"), [("inductive", 2), ("transductive", 2), ("transductive", 1)])
def test_resume_auto_gives_the_same_weights(tmp_path, setting, batch_size):
    # batch_size 1: two accumulated micro-batches per step (the global batch stays 2)
    cfg = train_cfg(batch_size=batch_size)
    full = Trainer(tiny_model(setting), SquaresDataset(), cfg, tmp_path / "full")
    full.train()
    assert full.cfg.grad_accum == 2 // batch_size

    def crash(model):  # the process dies right after the step-4 checkpoint was written
        raise SystemExit("killed")

    part = Trainer(tiny_model(setting), SquaresDataset(), replace(cfg, eval_interval=4), tmp_path / "part", crash)
    with pytest.raises(SystemExit):
        part.train()
    assert find_latest_checkpoint(tmp_path / "part").name == "iter_4.pt"
    resumed = Trainer(tiny_model(setting), SquaresDataset(), cfg, tmp_path / "part")
    resumed.train(resume="auto")
    assert resumed.step == 8
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def _trainable(model: OTSeg) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])


def _logged_losses(work_dir) -> list[float]:
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.mark.parametrize("setting", ["inductive", "transductive"])
def test_accumulated_micro_batches_give_the_update_of_one_batch(tmp_path, setting):
    # Global batch 4 as 2 micro-batches of 2 (masks counted over both, gradients normalised once per step) against
    # one micro-batch of 4 whose Sinkhorn stops per 2 images: the same images, normalisation and stopping groups,
    # so the same update to float rounding (measured 4e-7 to 8e-7). Self-training counts masks on pseudo-labels made
    # in the forward. Six prompts: the transport problems take 12-34 iterations (one prompt: always 2).
    theta0 = _trainable(tiny_model(setting, dropout=False, prompts=6))
    runs = {}
    for name, batch_size in (("accumulated", 2), ("whole", 4)):
        cfg = train_cfg(global_batch=4, batch_size=batch_size, sinkhorn_stop_group=2, max_iters=4)
        runs[name] = Trainer(tiny_model(setting, dropout=False, prompts=6), SquaresDataset(), cfg, tmp_path / name)
        runs[name].train()
    assert (runs["accumulated"].cfg.grad_accum, runs["whole"].cfg.grad_accum) == (2, 1)
    a, b = (_trainable(t.model) for t in runs.values())
    assert float((a - b).norm() / (a - theta0).norm()) <= 1e-5
    # The logged losses are the normalised ones in both layouts.
    assert _logged_losses(tmp_path / "accumulated") == pytest.approx(_logged_losses(tmp_path / "whole"), rel=1e-5)


def test_fp16_grad_scaler_with_accumulated_micro_batches(tmp_path):
    # --amp fp16: the GradScaler scales each micro-batch's per-image sum; the step-wide normalisation is applied to
    # the scaled gradients before the scaler unscales them. The logged losses are the normalised ones (the first
    # records equal the one-micro-batch run's), and training goes on once the scale has settled.
    theta0 = _trainable(tiny_model(dropout=False, prompts=6))
    runs = {}
    for batch_size in (2, 4):
        cfg = train_cfg(global_batch=4, batch_size=batch_size, sinkhorn_stop_group=2, max_iters=12, amp="fp16")
        runs[batch_size] = Trainer(
            tiny_model(dropout=False, prompts=6), SquaresDataset(), cfg, tmp_path / str(batch_size)
        )
        runs[batch_size].train()
    accumulated = runs[2]
    assert accumulated.cfg.grad_accum == 2 and accumulated.scaler.is_enabled()
    assert accumulated.scaler.get_scale() < 2.0**16  # it skipped overflowing steps and lowered the scale
    trained = _trainable(accumulated.model)
    assert bool(torch.isfinite(trained).all()) and float((trained - theta0).norm()) > 0
    assert _logged_losses(tmp_path / "2")[:2] == pytest.approx(_logged_losses(tmp_path / "4")[:2], rel=1e-5)


def test_sinkhorn_stop_group_splits_a_micro_batch_into_stopping_tests(tmp_path):
    # The control of the test above: the stop group is in force (one call per 2 images), and one stopping test over
    # all 4 images (stop group 0) stops elsewhere and trains other weights (here 8e-6 of the update apart: this tiny
    # model's problems converge in a few dozen iterations; tests/ops show the grouping itself exactly).
    iterations, trained = {}, {}
    for group in (2, 0):
        cfg = train_cfg(global_batch=4, batch_size=4, sinkhorn_stop_group=group, max_iters=4)
        trainer = Trainer(tiny_model(dropout=False, prompts=6), SquaresDataset(), cfg, tmp_path / str(group))
        with record_sinkhorn_calls() as calls:
            trainer.train()
        assert {c.shape[0] for c in calls} == {(group or 4) * 3}  # images x 3 seen classes per call
        iterations[group] = [c.iterations for c in calls]
        trained[group] = _trainable(trainer.model)
    # The first forward's MPS path: the two groups do not both stop where the single test over 4 images stops.
    assert set(iterations[2][:2]) != {iterations[0][0]}
    assert not torch.equal(trained[2], trained[0])


def test_unrolled_sinkhorn_backward_trains_on_the_unrolled_gradient(tmp_path):
    # train.sinkhorn_backward="unrolled" differentiates through every Sinkhorn iteration (the reference's gradient):
    # the trainer's first gradient equals the one computed with SinkhornOptions(backward="unrolled").
    grads: list[torch.Tensor] = []

    class Spy(Trainer):
        def save_checkpoint(self):
            return None

    cfg = train_cfg(max_iters=1, sinkhorn_backward="unrolled")
    trainer = Spy(tiny_model(dropout=False, prompts=6), SquaresDataset(), cfg, tmp_path)
    original_step = trainer.optimizer.step

    def spy_step(*args, **kwargs):
        grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]))
        return original_step(*args, **kwargs)

    trainer.optimizer.step = spy_step  # type: ignore[method-assign]
    with record_sinkhorn_calls() as calls:
        trainer.train()
    assert calls and {(c.backward, c.update) for c in calls} == {("unrolled", "reference")}

    sampler = StepBatchSampler(len(SquaresDataset()), 2, 1, 0, 1, 0, 1, seed=cfg.seed)
    batch = collate_samples([SeededDataset(SquaresDataset())[key] for key in next(iter(sampler))])

    def reference_gradient(backward: SinkhornBackward) -> torch.Tensor:
        model = tiny_model(dropout=False, prompts=6)
        options = SinkhornOptions(backward=backward)
        loss = total_loss(compute_losses(model, batch["image"], batch["label"], sinkhorn_options=options))
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    unrolled, implicit = reference_gradient("unrolled"), reference_gradient("implicit")
    # Measured: equal (0.0); the implicit gradient is 2.2e-4 away (problems stopped after 12-34 iterations).
    assert float((grads[0] - unrolled).norm() / unrolled.norm()) <= 1e-6
    assert float((implicit - unrolled).norm() / unrolled.norm()) > 1e-5


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


def test_sampler_gives_each_group_of_a_step_the_same_images_whoever_computes_it():
    # Global batch 8 as groups of 2: (processes, accumulation) = (1, 4), (2, 2), (4, 1) read group g as micro-batch
    # g // world of rank g % world; the seeds (augmentation) travel with the positions.
    def groups(world: int, accum: int, start: int = 0) -> list[list[tuple[int, int]]]:
        ranks = [list(StepBatchSampler(10, 2, world, r, accum, start, 5, seed=1)) for r in range(world)]
        out: list[list[tuple[int, int]]] = []
        for step in range(5 - start):
            for micro in range(accum):
                out.extend(ranks[r][step * accum + micro] for r in range(world))
        return out

    single = groups(1, 4)
    assert groups(2, 2) == groups(4, 1) == single
    assert len(single) == 20 and all(len(g) == 2 for g in single)
    whole = list(StepBatchSampler(10, 8, 1, 0, 1, 0, 5, seed=1))  # one micro-batch of 8: the same positions
    assert whole == [[key for group in single[4 * s : 4 * s + 4] for key in group] for s in range(5)]
    assert groups(2, 2, start=3) == single[12:]  # resuming at step 3


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
