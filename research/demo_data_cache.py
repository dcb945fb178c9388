"""What keeping the demo world's decoded images in memory saves (`SegmentationDataset(cache_bytes=...)`,
`otseg.demo.training.SPLIT_CACHE_BYTES`).

Trains the same demo run twice in this process, reading the world from disk each time (`cache_bytes=0`) and from
memory, and evaluates the held-out split a few times each way; prints the times, their ratio, and whether the two
runs logged bit-identical losses (they must: the cache changes where the bytes come from, not what they are).
Run it on a quiet machine, one thread, as the demo's workers run:

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/demo_data_cache.py [--arch otseg] [--iters 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from otseg.demo.presets import DemoSettings
from otseg.demo.scoring import holdout_seen_miou
from otseg.demo.tiny_clip import tiny_clip_path
from otseg.demo.training import SPLIT_CACHE_BYTES, demo_datasets, demo_holdout_set, train_demo_model
from otseg.demo.world import world_dir
from otseg.formats.openai_clip import read_clip_state_dict


def _losses(work: Path) -> list[float]:
    lines = (work / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [record["loss"] for record in map(json.loads, lines) if "loss" in record]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=("zegclip", "otseg"), default="zegclip")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--evals", type=int, default=5, help="held-out evaluations timed each way")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = DemoSettings.full(0)
    cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, iters=args.iters, baseline_iters=args.iters))
    root = world_dir(cfg.world)
    clip_state = read_clip_state_dict(tiny_clip_path(cfg.world, cfg.clip))
    times: dict[str, dict[str, float]] = {}
    losses: dict[str, list[float]] = {}
    for label, budget in (("disk", 0), ("memory", SPLIT_CACHE_BYTES)):
        train_set, _ = demo_datasets(cfg, root, cache_bytes=budget)
        holdout = demo_holdout_set(cfg, root, cache_bytes=budget)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            model = train_demo_model(cfg, args.arch, "inductive", clip_state, train_set, Path(tmp), progress=False)
            train_s = time.perf_counter() - t0
            losses[label] = _losses(Path(tmp))
        holdout_seen_miou(model, holdout)  # untimed: the first pass fills the cache
        t0 = time.perf_counter()
        for _ in range(args.evals):
            holdout_seen_miou(model, holdout)
        times[label] = {"train": train_s, "eval": (time.perf_counter() - t0) / args.evals}
    print(f"{args.arch}, {args.iters} iterations, batch {cfg.recipe.batch_size}, one thread")
    for part in ("train", "eval"):
        disk, memory = times["disk"][part], times["memory"][part]
        what = f"{args.iters} training steps" if part == "train" else "one held-out evaluation (200 images)"
        print(f"  {what}: disk {disk:.2f} s, memory {memory:.2f} s, disk / memory {disk / memory:.2f}x")
    print(f"  identical losses: {losses['disk'] == losses['memory']} ({len(losses['disk'])} logged)")


if __name__ == "__main__":
    main()
