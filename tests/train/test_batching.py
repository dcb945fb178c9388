"""The global batch's decomposition into processes x per-process batch x accumulation steps."""

from __future__ import annotations

import pytest

from otseg.config import TrainConfig
from otseg.train.batching import fitting_batch_size, linear_lr_note, plan_batch, resolve_batch
from otseg.train.preflight import batch_note


@pytest.mark.parametrize(
    ("world", "batch", "accum", "line"),
    [
        (1, 4, 4, "global batch 16 = 1 process x batch 4 x 4 accumulation steps"),
        (2, 4, 2, "global batch 16 = 2 processes x batch 4 x 2 accumulation steps"),
        (4, 4, 1, "global batch 16 = 4 processes x batch 4 x 1 accumulation step"),
        (8, 2, 1, "global batch 16 = 8 processes x batch 2 x 1 accumulation step"),
        (1, 16, 1, "global batch 16 = 1 process x batch 16 x 1 accumulation step"),
    ],
)
def test_the_reference_global_batch_on_1_2_4_8_processes(world, batch, accum, line):
    plan = plan_batch(TrainConfig(batch_size=batch), world)
    assert (plan.global_batch, plan.grad_accum, plan.micro_batches) == (16, accum, world * accum)
    assert plan.describe() == line
    resolved = resolve_batch(TrainConfig(batch_size=batch), world)
    assert (resolved.grad_accum, resolved.world_size) == (accum, world)
    assert resolve_batch(resolved, world) == resolved  # the recorded values agree with themselves


def test_the_default_batch_fits_the_processes():
    # Without --batch-size: the reference's 4 where the processes allow it, else the largest smaller one.
    assert [fitting_batch_size(16, w, 4) for w in (1, 2, 4, 8, 16)] == [4, 4, 4, 2, 1]
    assert fitting_batch_size(16, 3, 4) == 4  # no batch fits 3 processes: plan_batch refuses, naming the counts
    assert fitting_batch_size(8, 1, 4) == 4 and fitting_batch_size(12, 2, 4) == 3


def test_a_split_that_does_not_divide_is_refused_with_a_fix():
    with pytest.raises(ValueError, match=r"cannot be split into 3 processes x batch 4: 16 is not a multiple of 12"):
        plan_batch(TrainConfig(), 3)
    with pytest.raises(ValueError, match=r"process count among 1, 2, 4 .*train\.global_batch=12"):
        plan_batch(TrainConfig(), 3)
    with pytest.raises(ValueError, match=r"--batch-size 2"):
        plan_batch(TrainConfig(batch_size=4), 8)
    with pytest.raises(ValueError, match=r"train\.grad_accum=2 disagrees .* x 4 accumulation steps.*global_batch=8"):
        plan_batch(TrainConfig(grad_accum=2), 1)
    with pytest.raises(ValueError, match=r"train\.world_size=4 but 2 processes started"):
        plan_batch(TrainConfig(world_size=4), 2)


def test_the_linear_lr_rule_is_printed_not_applied():
    recipe = TrainConfig()
    assert linear_lr_note(TrainConfig(), recipe) is None
    note = linear_lr_note(TrainConfig(global_batch=8), recipe)
    assert note is not None and "lr 0.0001 (--set train.lr=0.0001)" in note and "this run uses lr 0.0002" in note
    lines = batch_note(TrainConfig(global_batch=8, batch_size=4), 1, recipe).splitlines()
    assert lines[0] == "global batch 8 = 1 process x batch 4 x 2 accumulation steps" and "not applied" in lines[1]
    assert batch_note(TrainConfig(), 4) == (
        "global batch 16 = 4 processes x batch 4 x 1 accumulation step (the reference's: 4 GPUs x batch 4)"
    )
    # Per-device batches that do not hold the reference's stopping groups of 4 images are said so.
    assert "stopping test covers a micro-batch's 2 images" in batch_note(TrainConfig(batch_size=2), 8)
    assert "groups of 4 (train.sinkhorn_stop_group) and one of 2" in batch_note(
        TrainConfig(global_batch=12, batch_size=6), 2
    )
