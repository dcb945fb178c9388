"""Would averaged weights steady the held-out curve? One baseline run, its checkpoints scored as trained and as an
exponential moving average of the trainable weights (`demo-notes.md`, "Reading the convergence test").

The held-out seen mIoU moves by a few points from one evaluation to the next late in training, and the moves are the
model's, not the split's (`research/demo_holdout_scatter.py`). A moving average of the weights is the usual remedy. This
trains the ZegCLIP-style baseline inductively (seed 0, one thread; the recipe's length unless `--iters`), and at each
held-out evaluation also scores two averages, with decays 0.995 and 0.999 (about 200 and 1,000 steps), fixed before
the first run. The averages start from the weights at the first evaluation; at the fast length that start weighs
under 0.1 % in the 0.995 average from the second half of the run on, and 24 % (half-way) to 5 % (the end) in the
0.999 one. Training itself is untouched: the averages are
copies, scored and thrown away.

Prints each curve with its trend and scatter (`otseg.demo.curves.trend_change`) and the standard deviation of the
change from one evaluation to the next over the second half; appends a JSON line to
`research/results/demo_weight_average.jsonl`. The baseline only: this is calibration, no OTSeg model is trained.

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/demo_weight_average.py
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from otseg.demo.curves import last_fraction_change, step_change_sd, trend_change
from otseg.demo.presets import DemoSettings
from otseg.demo.scoring import holdout_seen_miou
from otseg.demo.tiny_clip import tiny_clip_path
from otseg.demo.training import demo_datasets, demo_holdout_set, train_demo_model
from otseg.demo.world import GENERATOR_VERSION, world_dir
from otseg.formats.openai_clip import read_clip_state_dict

RESULTS = Path(__file__).parent / "results" / "demo_weight_average.jsonl"
DECAYS = (0.995, 0.999)


class WeightAverages:
    """Exponential moving averages of a model's trainable parameters, one per decay; `update()` after every step."""

    def __init__(self, model: torch.nn.Module, decays: tuple[float, ...]) -> None:
        self.model = model
        self.names = [name for name, param in model.named_parameters() if param.requires_grad]
        params = dict(model.named_parameters())
        self.averages = {d: {n: params[n].detach().clone() for n in self.names} for d in decays}

    @torch.no_grad()
    def update(self) -> None:
        params = dict(self.model.named_parameters())
        for decay, average in self.averages.items():
            for name in self.names:
                average[name].mul_(decay).add_(params[name].detach(), alpha=1.0 - decay)

    def averaged_model(self, decay: float) -> torch.nn.Module:
        """A copy of the model with the averaged parameters in place of the trained ones."""
        twin = copy.deepcopy(self.model)
        params = dict(twin.named_parameters())
        with torch.no_grad():
            for name, value in self.averages[decay].items():
                params[name].copy_(value)
        return twin


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=None, help="the baseline's schedule (default: the recipe's)")
    p.add_argument("--eval-points", type=int, default=20, help="held-out evaluations during the run (default 20)")
    p.add_argument("--results", type=Path, default=RESULTS, help=f"the JSON-lines file to append to ({RESULTS})")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = DemoSettings.full(0)
    iters = args.iters if args.iters is not None else cfg.recipe.baseline_iters
    recipe = dataclasses.replace(cfg.recipe, baseline_iters=iters, eval_points=args.eval_points)
    cfg = dataclasses.replace(cfg, recipe=recipe)
    root = world_dir(cfg.world)
    train_set, _ = demo_datasets(cfg, root)
    holdout = demo_holdout_set(cfg, root)
    averages: list[WeightAverages] = []  # made at the first evaluation, the first time the model is in reach
    step_now = [0]
    curves: dict[str, list[tuple[int, float]]] = {"trained": [], **{f"average {d}": [] for d in DECAYS}}

    def on_step(step: int) -> None:
        step_now[0] = step
        if averages:
            averages[0].update()

    def evaluate(model: Any) -> dict[str, Any]:
        if not averages:
            averages.append(WeightAverages(model, DECAYS))
        value = holdout_seen_miou(model, holdout)
        curves["trained"].append((step_now[0], round(value, 2)))
        for decay in DECAYS:
            twin = averages[0].averaged_model(decay)
            curves[f"average {decay}"].append((step_now[0], round(holdout_seen_miou(twin, holdout), 2)))
        return {"holdout_miou_seen": value}

    state = read_clip_state_dict(tiny_clip_path(cfg.world, cfg.clip))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        train_demo_model(cfg, "zegclip", "inductive", state, train_set, Path(out) / "w", progress=False,
                         on_step=on_step, evaluate=evaluate)  # fmt: skip
    seconds = time.perf_counter() - t0
    print(f"zegclip inductive, {iters} iterations, {args.eval_points} evaluations; {seconds:.0f} s")
    summary: dict[str, dict[str, Any]] = {}
    for name, curve in curves.items():
        trend = trend_change(curve)
        values = [v for _, v in curve]
        summary[name] = {
            "curve": curve,
            "change_last_20": _rounded(last_fraction_change(curve)),
            "trend": None if trend is None else round(trend[0], 3),
            "scatter": None if trend is None else round(trend[1], 3),
            "change_sd_second_half": _rounded(step_change_sd(values), 3),
        }
        s = summary[name]
        print(f"{name}: " + ", ".join(f"{v:.1f}" for v in values))
        print(f"  largest change over the last 20 % {s['change_last_20']}, trend {s['trend']}, scatter "
              f"{s['scatter']}, change sd (second half) {s['change_sd_second_half']}")  # fmt: skip
    line = {"world_version": GENERATOR_VERSION, "arch": "zegclip", "setting": "inductive", "iters": iters,
            "eval_points": args.eval_points, "runs": summary, "seconds": round(seconds, 1)}  # fmt: skip
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
