"""Calibration of the demo's training lengths: one run of one architecture (the ZegCLIP-style baseline by default,
or OTSeg), at a chosen length and learning rate, with its held-out seen curve (`demo-notes.md`, calibration steps 7
and 8).

Trains one run of the demo (seed 0 unless `--seed`, one thread) and appends a JSON line to
`research/results/demo_schedule.jsonl`: the test rows (bias 0.1 and, for inductive, 0), the held-out seen mIoU at each
tenth of the schedule, its largest change over the last 20 % and the training time (lines without "seed" are seed
0). A length is chosen from the curve alone (the change over the last 20 %).

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/demo_schedule.py --setting inductive --iters 6400
    OMP_NUM_THREADS=1 PYTHONPATH=src python research/demo_schedule.py --arch otseg --setting fully --iters 3200
    OMP_NUM_THREADS=1 PYTHONPATH=src python research/demo_schedule.py --setting inductive --iters 1600 \\
        --lr 5e-3 --backbone-lr-mult 0.04
    OMP_NUM_THREADS=1 PYTHONPATH=src python research/demo_schedule.py --setting inductive --iters 1600 \\
        --lr 5e-3 --warmup-iters 400
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from otseg.demo.card import world_card
from otseg.demo.curves import last_fraction_change
from otseg.demo.jobs import DemoJob, JobContext, run_job
from otseg.demo.presets import DemoSettings
from otseg.demo.tiny_clip import tiny_clip_path
from otseg.demo.world import GENERATOR_VERSION, world_dir

RESULTS = Path(__file__).parent / "results" / "demo_schedule.jsonl"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=("inductive", "fully"), default="inductive")
    p.add_argument("--arch", choices=("zegclip", "otseg"), default="zegclip", help="the trained architecture")
    p.add_argument("--iters", type=int, default=None, help="the architecture's schedule (default: the recipe's)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--backbone-lr-mult", type=float, default=None)
    p.add_argument("--warmup-iters", type=int, default=None, help="linear warm-up length (default: the recipe's)")
    p.add_argument("--eval-points", type=int, default=None, help="held-out evaluations per run (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="the world and training seed (default 0)")
    p.add_argument("--card", action="store_true", help="also print the world card (method-agnostic)")
    p.add_argument("--results", type=Path, default=RESULTS, help=f"the JSON-lines file to append to ({RESULTS})")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = DemoSettings.full(args.seed)
    recipe = cfg.recipe
    length_field = "baseline_iters" if args.arch == "zegclip" else "iters"
    changes = {
        length_field: args.iters if args.iters is not None else getattr(recipe, length_field),
        "lr": args.lr if args.lr is not None else recipe.lr,
        "backbone_lr_mult": args.backbone_lr_mult if args.backbone_lr_mult is not None else recipe.backbone_lr_mult,
        "eval_points": args.eval_points if args.eval_points is not None else recipe.eval_points,
        "warmup_iters": args.warmup_iters if args.warmup_iters is not None else recipe.warmup_iters,
    }
    cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(recipe, **changes))
    root = world_dir(cfg.world)
    clip = tiny_clip_path(cfg.world, cfg.clip)
    if args.card:
        print(json.dumps(world_card(root, clip), indent=1))
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = run_job(DemoJob(args.arch, args.setting), JobContext(cfg, root, clip, Path(out), ()))
        seconds = time.perf_counter() - t0
    line = {
        "world_version": GENERATOR_VERSION,
        "seed": args.seed,
        "arch": args.arch,
        "setting": args.setting,
        **changes,
        "rows": result["rows"],
        "rows_bias0": result["rows_bias0"],
        "curve": result["curve"],
        "change_last_20": last_fraction_change(result["curve"]),
        "seconds": round(seconds, 1),
    }
    print(json.dumps(line))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
