"""`otseg demo`: the miniature zero-shot benchmark, trained and scored on the CPU (the demo application)."""

from __future__ import annotations

import argparse

# The demo's training lengths (otseg.demo.presets.SCHEDULES, which a test keeps equal to this).
SCHEDULES = ("fast", "long", "longer")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the miniature zero-shot benchmark end to end on the CPU (no downloads)",
        description="Generate a miniature zero-shot segmentation world, load the tiny CLIP pretrained on its captions "
        "(shipped with otseg), print the world card (the properties that make the miniature resemble the real "
        "problem), train ZegCLIP-style and OTSeg models (inductive, transductive, fully supervised), evaluate them, "
        "a training-free row and a control, print the table and write results.json, curves and pictures. About 12 "
        "minutes on 2 CPU cores.",
    )
    p.add_argument(
        "--out",
        default="runs/demo",
        help="output folder (default: runs/demo); run again into the same folder after an interruption: the "
        "training runs that finished there with the same settings are read back, and those cut short go on from "
        "their last checkpoint",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of the world and of every training run (default: 0)")
    p.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        help="several seeds, e.g. 0,1,2: the whole table per seed (in OUT/seed_N/), then mean ± std per cell",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="fast",
        help="training lengths: fast (default, about 13 minutes on 2 cores; some held-out curves still rise at the "
        "end), long (twice the iterations, about 25 minutes) or longer (four times, about 50 minutes)",
    )
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run with meaningless numbers")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="training processes run in parallel (default: one per CPU core, at most 4); 1 trains in this process",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of each training process (default: CPU cores / workers); models this small gain "
        "little from a second thread, and lose much when the machine is busy with other work",
    )
    p.set_defaults(run=run)


def _seed(text: str) -> int:
    """A seed: a whole number from 0 (NumPy's generators take no negative seeds)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed takes a whole number from 0, e.g. 0; got {text!r}") from None
    if seed < 0:
        raise argparse.ArgumentTypeError(f"--seed takes a whole number from 0 (seeds are not negative); got {text!r}")
    return seed


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        message = f"--seeds takes whole numbers separated by commas, e.g. 0,1,2; got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"--seeds takes whole numbers from 0 (seeds are not negative); got {text!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds needs distinct seeds, e.g. 0,1,2; got {text!r}")
    return seeds


def run(args: argparse.Namespace) -> int:
    from otseg.demo.run import run_demo
    from otseg.demo.seeds import run_demo_seeds

    options = dict(
        quick=args.quick, progress=not args.no_progress, workers=args.workers, threads=args.threads,
        schedule=args.schedule,
    )  # fmt: skip
    if args.seeds is not None:
        run_demo_seeds(args.out, args.seeds, **options)
    else:
        run_demo(args.out, seed=args.seed, **options)
    return 0
