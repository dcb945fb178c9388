"""The global batch of the recipe and its decomposition: processes x images per process x accumulation steps.

`TrainConfig.global_batch` (the reference: 4 GPUs x 4 images = 16) is part of the recipe; the hardware decides
how it is computed. With W processes of `batch_size` images each, an optimizer step accumulates
global_batch / (W * batch_size) micro-batches. `resolve_batch` fills the derived fields `grad_accum` and
`world_size` of a `TrainConfig` (what config.json records), refusing in one line a global batch that the processes
and batch size cannot divide, or an explicit derived value that disagrees.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from otseg.config import TrainConfig
from otseg.errors import BadValueError

__all__ = ["BatchPlan", "fitting_batch_size", "linear_lr_note", "plan_batch", "resolve_batch"]


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's `global_batch` images are computed.

    Attributes:
        global_batch: images per optimizer step, over all processes.
        batch_size: images per process and micro-batch.
        world_size: processes.
        grad_accum: micro-batches per process and step.
    """

    global_batch: int
    batch_size: int
    world_size: int
    grad_accum: int

    @property
    def micro_batches(self) -> int:
        """Micro-batches per step over all processes (world_size x grad_accum): the loss normaliser's divisor,
        as the reference's GPU count."""
        return self.world_size * self.grad_accum

    def describe(self) -> str:
        """E.g. "global batch 16 = 1 process x batch 4 x 4 accumulation steps"."""
        return (
            f"global batch {self.global_batch} = {_plural(self.world_size, 'process', 'processes')} x batch "
            f"{self.batch_size} x {_plural(self.grad_accum, 'accumulation step')}"
        )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _split_fixes(global_batch: int, batch_size: int, world_size: int) -> str:
    """What to change so that `world_size` processes x some batch divide `global_batch`."""
    fixes = []
    batches = [b for b in _divisors(global_batch) if (global_batch // b) % world_size == 0]
    if batches:
        smaller = [b for b in batches if b <= batch_size]
        fixes.append(f"--batch-size {max(smaller) if smaller else min(batches)}")
    procs = [w for w in _divisors(global_batch // batch_size)] if global_batch % batch_size == 0 else []
    if procs:
        fixes.append(f"a process count among {', '.join(map(str, procs))} (torchrun --nproc_per_node=N)")
    unit = world_size * batch_size
    nearest = max(unit, round(global_batch / unit) * unit)
    fixes.append(f"--set train.global_batch={nearest} (a multiple of {unit}; the recipe changes)")
    return " or ".join(fixes)


def plan_batch(cfg: TrainConfig, world_size: int) -> BatchPlan:
    """The decomposition of `cfg.global_batch` over `world_size` processes of `cfg.batch_size` images.

    Raises:
        ValueError: one line naming the values and a fix, when world_size x batch_size does not divide the global
            batch, or when `cfg.grad_accum` / `cfg.world_size` are set (non-zero) and disagree with the derived ones.
    """
    if world_size < 1:
        raise BadValueError(f"world size {world_size}: expected at least 1 process")
    g, b = cfg.global_batch, cfg.batch_size
    if cfg.world_size and cfg.world_size != world_size:
        raise BadValueError(
            f"train.world_size={cfg.world_size} but {_plural(world_size, 'process', 'processes')} started: "
            "train.world_size is recorded, not chosen; drop it (0 = the processes started) or start that many"
        )
    unit = world_size * b
    if g % unit:
        raise BadValueError(
            f"train.global_batch={g} cannot be split into {_plural(world_size, 'process', 'processes')} x batch {b}: "
            f"{g} is not a multiple of {unit}; use {_split_fixes(g, b, world_size)}"
        )
    accum = g // unit
    if cfg.grad_accum and cfg.grad_accum != accum:
        raise BadValueError(
            f"train.grad_accum={cfg.grad_accum} disagrees with global batch {g} = "
            f"{_plural(world_size, 'process', 'processes')} x batch {b} x {_plural(accum, 'accumulation step')}: "
            "the accumulation steps follow from train.global_batch and --batch-size; drop train.grad_accum, or set "
            "train.global_batch="
            f"{unit * cfg.grad_accum} to accumulate {cfg.grad_accum}"
        )
    return BatchPlan(global_batch=g, batch_size=b, world_size=world_size, grad_accum=accum)


def fitting_batch_size(global_batch: int, world_size: int, preferred: int) -> int:
    """The largest per-process batch up to `preferred` that `world_size` processes can split `global_batch` into
    (`preferred` itself when none can: `plan_batch` then says why). What `otseg train` uses when --batch-size is not
    given: the recipe's 16 on 8 processes is 2 images each, on 1, 2 or 4 processes the reference's 4."""
    fitting = [b for b in range(1, preferred + 1) if global_batch % (world_size * b) == 0]
    return max(fitting) if fitting else preferred


def resolve_batch(cfg: TrainConfig, world_size: int) -> TrainConfig:
    """A copy of `cfg` with `grad_accum` and `world_size` derived (`plan_batch`; the same errors)."""
    plan = plan_batch(cfg, world_size)
    return dataclasses.replace(cfg, grad_accum=plan.grad_accum, world_size=plan.world_size)


def linear_lr_note(cfg: TrainConfig, recipe: TrainConfig) -> str | None:
    """When `cfg.global_batch` differs from the recipe's: the lr the linear scaling rule would give (never
    applied: the run keeps `cfg.lr`). None when the global batch is the recipe's."""
    if cfg.global_batch == recipe.global_batch:
        return None
    scaled = recipe.lr * cfg.global_batch / recipe.global_batch
    return (
        f"note: global batch {cfg.global_batch} differs from the recipe's {recipe.global_batch} (lr {recipe.lr:g}); "
        f"the linear scaling rule would give lr {scaled:.3g} (--set train.lr={scaled:.3g}); not applied: this run "
        f"uses lr {cfg.lr:g}"
    )
