"""What a demo training step costs at another batch size: milliseconds per step of each architecture at the recipe's
8 images and at a second size (16, the reference's batch, by default), one thread, as the demo's workers run.

Each (architecture, batch size) pair is timed twice, alternating, over `--steps` steps after a warm-up; the decoded
training images are cached first, so the times are the model's and the augmentation's, not PNG decoding. Prints the
times and the ratio of the second size to the recipe's, measured in the same run (`demo-notes.md`, "Reading the
convergence test").

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/demo_step_time.py
    OMP_NUM_THREADS=1 PYTHONPATH=src python research/demo_step_time.py --batch-size 12 --steps 40
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from otseg.demo.presets import DemoSettings, demo_train_config
from otseg.demo.tiny_clip import tiny_clip_path
from otseg.demo.training import build_demo_model, demo_datasets
from otseg.demo.world import world_dir
from otseg.formats.openai_clip import read_clip_state_dict
from otseg.train.trainer import Trainer

ARCHS = ("zegclip", "otseg")
WARMUP_STEPS = 5


def seconds_per_step(
    arch: str, batch_size: int, steps: int, settings: DemoSettings, train_set: Any, state: dict[str, torch.Tensor]
) -> float:
    """Mean wall time of one training step of `arch` at `batch_size` (the regular Trainer, inductive setting)."""
    model = build_demo_model(settings, arch, "inductive", state)
    train_cfg = demo_train_config(arch, "inductive", settings.recipe)
    train_cfg.global_batch = train_cfg.batch_size = batch_size  # one micro-batch per step, as the recipe's
    train_cfg.log_interval = steps + WARMUP_STEPS
    with tempfile.TemporaryDirectory() as work:
        train_cfg.max_iters = train_cfg.checkpoint_interval = WARMUP_STEPS
        train_cfg.keep_every = 0
        trainer = Trainer(model, train_set, train_cfg, Path(work) / "warm", progress=False)
        trainer.train()
        train_cfg.max_iters = train_cfg.checkpoint_interval = steps
        trainer = Trainer(model, train_set, train_cfg, Path(work) / "timed", progress=False)
        start = time.perf_counter()
        trainer.train()
        return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=16, help="the size compared with the recipe's (default 16)")
    p.add_argument("--steps", type=int, default=80, help="timed steps per measurement (default 80)")
    args = p.parse_args()
    if args.batch_size < 1 or args.steps < 1:
        p.error(f"--batch-size {args.batch_size} and --steps {args.steps}: each at least 1")
    torch.set_num_threads(1)
    settings = DemoSettings.full(0)
    train_set, _ = demo_datasets(settings, world_dir(settings.world))
    for i in range(len(train_set)):
        train_set[i]  # decode every image once: the split cache then serves them, as in a long run
    state = read_clip_state_dict(tiny_clip_path(settings.world, settings.clip))
    sizes = (settings.recipe.batch_size, args.batch_size)
    for arch in ARCHS:
        times: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(2):
            for size in sizes:
                times[size].append(seconds_per_step(arch, size, args.steps, settings, train_set, state))
        base, other = (statistics.fmean(times[size]) for size in sizes)
        print(
            f"{arch}: {1000 * base:.1f} ms a step at {sizes[0]} images, {1000 * other:.1f} ms at {sizes[1]} "
            f"(runs: {', '.join(f'{1000 * t:.1f}' for t in times[sizes[0]])} / "
            f"{', '.join(f'{1000 * t:.1f}' for t in times[sizes[1]])}); ratio {other / base:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
