"""Start-up checks of `otseg train` that catch recipes which would run but not do what the user expects:

* a warm-up longer than the run (the lr would never reach its peak: a 24-iteration run of the 1500-iteration
  warm-up peaks at lr 8e-7 and learns nothing);
* a transductive (self-training) preset without `--init-from` (the reference starts it from the inductive
  checkpoint at half schedule; from CLIP alone its pseudo-labels are noise);
* the global batch's decomposition into processes x batch x accumulation steps, and the linear lr rule when the
  global batch is not the recipe's (printed, never applied).
"""

from __future__ import annotations

from otseg.config import TrainConfig
from otseg.data.facts import find_dataset_facts
from otseg.errors import BadValueError
from otseg.train.batching import linear_lr_note, plan_batch

__all__ = ["REFERENCE_GLOBAL_BATCH", "batch_note", "require_transductive_init", "warmup_warning"]

REFERENCE_GLOBAL_BATCH = 16  # 4 GPUs x 4 images per GPU


def warmup_warning(tcfg: TrainConfig) -> str | None:
    """A warning when the linear warm-up does not end before the last iteration, else None."""
    if tcfg.warmup_iters < tcfg.max_iters:
        return None
    peak = tcfg.lr * (tcfg.warmup_ratio + (1 - tcfg.warmup_ratio) * tcfg.max_iters / max(1, tcfg.warmup_iters))
    return (
        f"warning: the lr warm-up lasts {tcfg.warmup_iters} iterations but the run has {tcfg.max_iters} "
        f"(--max-iters): the lr peaks at {peak:.1e} instead of {tcfg.lr:g}; shorten it with "
        f"--set train.warmup_iters=N (N < {tcfg.max_iters}, e.g. {max(1, tcfg.max_iters // 10)})"
    )


def batch_note(tcfg: TrainConfig, world_size: int, recipe: TrainConfig | None = None) -> str:
    """The decomposition of the global batch (`otseg.train.batching`), with the linear lr rule when the global batch
    is not the recipe's (`recipe`, default: `TrainConfig()`, the reference's), and the Sinkhorn stopping groups
    when a micro-batch cannot hold the reference's. Raises ValueError as `plan_batch` does."""
    plan = plan_batch(tcfg, world_size)
    reference = " (the reference's: 4 GPUs x batch 4)" if plan.global_batch == REFERENCE_GLOBAL_BATCH else ""
    lines = [plan.describe() + reference]
    lr_note = linear_lr_note(tcfg, recipe or TrainConfig())
    if lr_note:
        lines.append(lr_note)
    group = tcfg.sinkhorn_stop_group
    if group and plan.batch_size % group and plan.batch_size > group:
        lines.append(
            f"note: micro-batches of {plan.batch_size} images are split into Sinkhorn stopping groups of {group} "
            f"(train.sinkhorn_stop_group) and one of {plan.batch_size % group}"
        )
    elif group and plan.batch_size < group:
        lines.append(
            f"note: each Sinkhorn stopping test covers a micro-batch's {plan.batch_size} images, fewer than "
            f"train.sinkhorn_stop_group={group} (the reference's images per GPU); --batch-size {group} (on at most "
            f"{max(plan.global_batch // group, 1)} processes) keeps the reference's groups"
        )
    return "\n".join(lines)


def require_transductive_init(preset: str, setting: str, dataset: str, tcfg: TrainConfig, resuming: bool) -> None:
    """Raise ValueError (one line) for a transductive run that starts from nothing but CLIP.

    `resuming`: the run continues from its own checkpoint (it was initialised when it started).
    """
    if setting != "transductive" or tcfg.init_from or resuming:
        return
    facts = find_dataset_facts(dataset)
    schedule = facts.reference_iters if facts is not None else None
    iters = schedule["inductive"] if schedule else None
    half = f"iter_{iters // 2}.pt" if iters else "iter_N.pt"
    inductive = preset.replace("transductive", "inductive")
    raise BadValueError(
        f"{preset} self-trains on pseudo-labels, and the reference starts it from the inductive model at half "
        f"schedule ({half} of an {inductive} run), not from CLIP alone: pass --init-from "
        f"work_dirs/{inductive}/{half}"
    )
