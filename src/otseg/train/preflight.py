"""Start-up checks of `otseg train` that catch recipes which would run but not do what the user expects:

* a warm-up longer than the run (the lr would never reach its peak: a 24-iteration run of the 1500-iteration
  warm-up peaks at lr 8e-7 and learns nothing);
* a transductive (self-training) preset without `--init-from` (the reference starts it from the inductive
  checkpoint at half schedule; from CLIP alone its pseudo-labels are noise);
* the global batch against the reference's 16 (4 GPUs x 4 images), with the two ways to match it.
"""

from __future__ import annotations

from otseg.config import TrainConfig
from otseg.data.facts import find_dataset_facts

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


def batch_note(tcfg: TrainConfig, world_size: int) -> str:
    """The global batch, and how to match the reference's 16 when it differs."""
    total = world_size * tcfg.batch_size * tcfg.grad_accum
    line = (
        f"global batch {total} = {world_size} process(es) x {tcfg.batch_size} images x {tcfg.grad_accum} "
        f"accumulation step(s); the reference used {REFERENCE_GLOBAL_BATCH} (4 GPUs x 4) at lr 2e-4"
    )
    if total == REFERENCE_GLOBAL_BATCH:
        return line + ": matched"
    procs = max(1, REFERENCE_GLOBAL_BATCH // tcfg.batch_size)
    accum = max(1, REFERENCE_GLOBAL_BATCH // (world_size * tcfg.batch_size))
    return (
        f"{line}. To match it: torchrun --nproc_per_node={procs} -m otseg train ... , or --set "
        f"train.grad_accum={accum} (or scale train.lr linearly with the global batch)"
    )


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
    raise ValueError(
        f"{preset} self-trains on pseudo-labels, and the reference starts it from the inductive model at half "
        f"schedule ({half} of an {inductive} run), not from CLIP alone: pass --init-from "
        f"work_dirs/{inductive}/{half}"
    )
