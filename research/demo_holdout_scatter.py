"""Is the held-out curve's scatter the split's or the model's? (`demo-notes.md`, "Reading the convergence test".)

Trains one demo run (seed 0 unless `--seed`, one thread; OTSeg inductive at the fast length by default) and scores
every checkpoint it evaluates on a held-out split ten times the demo's: 2,000 images of seen classes, in ten blocks
of 200. The first block is the demo's own held-out split (the world seeds each image by its index, so a larger split
only adds images). If the evaluation-to-evaluation changes came from which 200 images happen to be scored, the mean
over the ten blocks would move about three times less than one block; if they are the model's, it moves as much.

The OTSeg model is scored on its decoder path (plain OTSeg); the demo's own curve for this model (the job's last
method) scores it as OTSeg+, which does not change its training.

Prints, over the second half of the evaluations: the standard deviation of the change from one evaluation to the
next, on the demo's 200 images and on the mean of the 2,000; the blocks' spread at one checkpoint (the sampling error
of one 200-image split); and how often a perfectly level curve with that scatter would pass the issue's test. Two
checks of where the changes come from: the same 2,000 images scored over the 12 seen classes alone (do the changes
come from seen pixels sent to unseen classes, which inductive training never scores?), and how much the seen
classes' IoUs move together (one confusable pair trading pixels, or the whole model's features moving?). Appends a
JSON line to `research/results/demo_holdout_scatter.jsonl`.

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/demo_holdout_scatter.py
    OMP_NUM_THREADS=1 PYTHONPATH=src python research/demo_holdout_scatter.py --arch zegclip --iters 3200
    OMP_NUM_THREADS=1 PYTHONPATH=src python research/demo_holdout_scatter.py --arch zegclip --batch-size 16
    OMP_NUM_THREADS=1 PYTHONPATH=src python research/demo_holdout_scatter.py --batch-size 16 --ablate attention

`--ablate` trains OTSeg with one of its parts replaced by the ZegCLIP-style baseline's (`ABLATIONS`), the recipe
unchanged: which part, if any, makes OTSeg's curve swing more than the baseline's? `--sinkhorn-eps` sets the
entropic regularisation of OTSeg's transport plans (the reference's 0.05): a larger one gives softer plans.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from otseg.config import ModelConfig
from otseg.demo.curves import second_half_changes, step_change_sd
from otseg.demo.presets import ZEGCLIP_TEMPLATES, DemoSettings, demo_model_config
from otseg.demo.scoring import unbiased_and_seen_only_metrics
from otseg.demo.tiny_clip import tiny_clip_path
from otseg.demo.training import demo_datasets, demo_holdout_set, train_demo_model
from otseg.demo.world import CLASS_NAMES, GENERATOR_VERSION, seen_ids, world_dir
from otseg.formats.openai_clip import read_clip_state_dict

RESULTS = Path(__file__).parent / "results" / "demo_holdout_scatter.jsonl"
BLOCK = 200  # the demo's held-out split size
BLOCKS = 10
SEEN = [CLASS_NAMES[i] for i in seen_ids()]
# OTSeg's parts that the ZegCLIP-style baseline does not have, each replaced by the baseline's own.
ABLATIONS: dict[str, str] = {
    "attention": "softmax multi-head cross-attention in the decoder instead of MPSA",
    "combination": "the last layer's score map as the logits instead of the gated combination of all layers",
    "mps-path": "no MPS score path (its loss term is gone; the decoder path alone is trained)",
    "prompts": "the baseline's single prompt per class instead of the six",
}


def ablated_config(model: ModelConfig, ablation: str) -> ModelConfig:
    """OTSeg's model config `model` with one part (`ABLATIONS`) replaced by the baseline's."""
    head = model.head
    if ablation == "attention":
        head = dataclasses.replace(head, attention="softmax")
    elif ablation == "combination":
        head = dataclasses.replace(head, map_combination="last")
    elif ablation == "mps-path":
        head = dataclasses.replace(head, use_mps=False)
    elif ablation == "prompts":
        return dataclasses.replace(model, templates=ZEGCLIP_TEMPLATES)
    else:
        raise KeyError(f"unknown ablation {ablation!r}; valid: {', '.join(ABLATIONS)}")
    return dataclasses.replace(model, head=head)


def level_curve_pass_probability(sd: float, others: int, threshold: float = 1.0, steps: int = 4000) -> float:
    """Probability that a level curve passes the convergence test when its evaluations scatter independently with
    standard deviation `sd`: every one of the `others` evaluations in the last 20 % lies within `threshold` of the
    last one. Integrates over the last evaluation z ~ N(0, sd^2): P = E_z[(Phi((z + t)/sd) - Phi((z - t)/sd))^others].
    """

    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    if sd == 0.0:
        return 1.0  # no scatter: every evaluation equals the last
    lo, hi = -8.0 * sd, 8.0 * sd
    dz = (hi - lo) / steps
    total = 0.0
    for i in range(steps):
        z = lo + (i + 0.5) * dz
        density = math.exp(-0.5 * (z / sd) ** 2) / (sd * math.sqrt(2.0 * math.pi))
        inside = cdf((z + threshold) / sd) - cdf((z - threshold) / sd)
        total += density * inside**others * dz
    return total


def classes_move_together(class_values: list[dict[str, float]]) -> float:
    """How much the classes' IoU changes move together over the second half of the evaluations: the variance of the
    change of their mean divided by what it would be if each class changed independently (the sum of the classes'
    change variances over the number of classes squared). 1 for independent classes, the number of classes when
    all change in lockstep, below 1 when they trade pixels with each other."""
    names = list(class_values[0])
    mean_changes = second_half_changes([statistics.fmean(v[c] for c in names) for v in class_values])
    per_class = [second_half_changes([v[c] for v in class_values]) for c in names]
    independent = sum(statistics.pvariance(changes) for changes in per_class) / len(names) ** 2
    return statistics.pvariance(mean_changes) / independent if independent > 0 else math.nan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=("zegclip", "otseg"), default="otseg", help="the trained architecture")
    p.add_argument("--iters", type=int, default=None, help="the architecture's schedule (default: the recipe's)")
    p.add_argument("--eval-points", type=int, default=20, help="held-out evaluations during the run (default 20)")
    p.add_argument("--batch-size", type=int, default=None, help="images per training step (default: the recipe's, 8)")
    p.add_argument(
        "--ablate", choices=tuple(ABLATIONS), default=None,
        help="with --arch otseg: replace one part of OTSeg by the baseline's: "
        + "; ".join(f"{k}: {v}" for k, v in ABLATIONS.items()),
    )  # fmt: skip
    p.add_argument(
        "--sinkhorn-eps", type=float, default=None,
        help="with --arch otseg: the Sinkhorn epsilon of MPS and MPSA (default: the reference's 0.05)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="the world and training seed (default 0)")
    p.add_argument("--results", type=Path, default=RESULTS, help=f"the JSON-lines file to append to ({RESULTS})")
    args = p.parse_args()
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch-size {args.batch_size}: at least 1 image per step")
    if args.ablate is not None and args.arch != "otseg":
        p.error(f"--ablate {args.ablate} changes OTSeg's model: use it with --arch otseg")
    if args.sinkhorn_eps is not None and (args.arch != "otseg" or not args.sinkhorn_eps > 0):
        p.error(f"--sinkhorn-eps {args.sinkhorn_eps}: a positive number, with --arch otseg")
    if args.seed < 0:
        p.error(f"--seed {args.seed}: a seed is a non-negative integer")
    if args.eval_points < 5:
        p.error(f"--eval-points {args.eval_points}: at least 5, so that the second half holds two changes")
    torch.set_num_threads(1)
    cfg = DemoSettings.full(args.seed)
    length_field = "baseline_iters" if args.arch == "zegclip" else "iters"
    iters = args.iters if args.iters is not None else getattr(cfg.recipe, length_field)
    batch_size = args.batch_size if args.batch_size is not None else cfg.recipe.batch_size
    recipe = dataclasses.replace(
        cfg.recipe, **{length_field: iters, "eval_points": args.eval_points, "batch_size": batch_size}
    )
    cfg = dataclasses.replace(cfg, recipe=recipe)
    large = dataclasses.replace(cfg, world=dataclasses.replace(cfg.world, num_holdout=BLOCK * BLOCKS))
    train_set, _ = demo_datasets(cfg, world_dir(cfg.world))
    holdout = demo_holdout_set(large, world_dir(large.world))
    blocks = [Subset(holdout, range(start, start + BLOCK)) for start in range(0, BLOCK * BLOCKS, BLOCK)]
    per_checkpoint: list[list[float]] = []
    seen_only_mean: list[float] = []  # the 2,000 images scored over the 12 seen classes alone
    class_means: list[dict[str, float]] = []  # each seen class's IoU, the mean over the ten blocks

    def evaluate(model: Any) -> dict[str, Any]:
        both = [unbiased_and_seen_only_metrics(model, block) for block in blocks]
        metrics = [everything for everything, _ in both]
        scores = [float(m["miou_seen"] or 0.0) for m in metrics]
        per_checkpoint.append(scores)
        seen_only_mean.append(statistics.fmean(float(seen_only["miou_seen"] or 0.0) for _, seen_only in both))
        class_means.append({c: statistics.fmean(float(m["per_class_iou"][c] or 0.0) for m in metrics) for c in SEEN})
        return {"holdout_miou_seen": scores[0]}

    state = read_clip_state_dict(tiny_clip_path(cfg.world, cfg.clip))
    model_config: ModelConfig | None = None  # None: the method's own
    if args.ablate is not None or args.sinkhorn_eps is not None:  # both checked above to come with --arch otseg
        model_config = demo_model_config("otseg", "inductive", cfg.world, cfg.clip)
        if args.ablate is not None:
            model_config = ablated_config(model_config, args.ablate)
        if args.sinkhorn_eps is not None:
            head = dataclasses.replace(model_config.head, sinkhorn_eps=args.sinkhorn_eps)
            model_config = dataclasses.replace(model_config, head=head)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        train_demo_model(cfg, args.arch, "inductive", state, train_set, Path(out) / "w", progress=False,
                         evaluate=evaluate, model_config=model_config)  # fmt: skip
    seconds = time.perf_counter() - t0
    demo_split = [scores[0] for scores in per_checkpoint]
    large_split = [statistics.fmean(scores) for scores in per_checkpoint]
    sd_demo = step_change_sd(demo_split)
    sd_large = step_change_sd(large_split)
    assert sd_demo is not None and sd_large is not None  # --eval-points >= 5
    block_sd = statistics.fmean(statistics.stdev(scores) for scores in per_checkpoint)
    sd_seen_only = step_change_sd(seen_only_mean)
    together = classes_move_together(class_means)
    # One evaluation's own scatter, from the changes between consecutive ones (a change has twice its variance).
    evaluation_sd = sd_demo / math.sqrt(2.0)
    passes = {n: level_curve_pass_probability(evaluation_sd, n) for n in (2, 4)}
    ablation = f" ({ABLATIONS[args.ablate]})" if args.ablate is not None else ""
    if args.sinkhorn_eps is not None:
        ablation += f" (Sinkhorn epsilon {args.sinkhorn_eps})"
    print(
        f"seed {args.seed}: {args.arch}{ablation} inductive, {iters} iterations of {batch_size} images, "
        f"{args.eval_points} evaluations; {seconds:.0f} s"
    )
    print("held-out seen mIoU, the demo's 200 images:", ", ".join(f"{v:.1f}" for v in demo_split))
    print("held-out seen mIoU, mean of 2,000 images: ", ", ".join(f"{v:.1f}" for v in large_split))
    print(
        f"change from one evaluation to the next (second half), sd: 200 images {sd_demo:.2f}, 2,000 images "
        f"{sd_large:.2f} (sampling alone would make the second {1 / math.sqrt(BLOCKS):.2f}x the first)"
    )
    print(f"sampling error of one 200-image split (sd of the ten blocks at one checkpoint, averaged): {block_sd:.2f}")
    print(
        f"scored over the 12 seen classes alone (unseen classes never predicted), 2,000 images: change sd "
        f"{sd_seen_only:.2f}"
    )
    print(
        f"the seen classes' IoU changes move together: the variance of the mean's change is {together:.2f}x what "
        f"independent classes would give (1 independent, {len(SEEN)} in lockstep)"
    )
    print(
        f"a level curve whose evaluations scatter by sd {evaluation_sd:.2f} passes the test (< 1 point over the last "
        f"20 %) with probability {passes[2]:.2f} at 10 evaluations, {passes[4]:.2f} at 20"
    )
    line = {
        "world_version": GENERATOR_VERSION,
        "seed": args.seed,
        "arch": args.arch,
        "ablate": args.ablate,
        "sinkhorn_eps": args.sinkhorn_eps,
        "setting": "inductive",
        "iters": iters,
        "batch_size": batch_size,
        "eval_points": args.eval_points,
        "demo_split": [round(v, 2) for v in demo_split],
        "large_split_mean": [round(v, 2) for v in large_split],
        "change_sd_demo_split": round(sd_demo, 3),
        "change_sd_large_split": round(sd_large, 3),
        "block_sd": round(block_sd, 3),
        "large_split_seen_only_mean": [round(v, 2) for v in seen_only_mean],
        "change_sd_large_split_seen_only": round(sd_seen_only, 3) if sd_seen_only is not None else None,
        "classes_move_together": round(together, 3) if math.isfinite(together) else None,
        "level_curve_pass_probability": {str(n): round(v, 4) for n, v in passes.items()},
        "seconds": round(seconds, 1),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
