"""How far the faster Sinkhorn modes move the demo benchmark's mIoU (issue: "document any faster mode, and how far
its outputs move ... on the demo's mIoU").

Reads the trained models of an `otseg demo --out DIR` run (DIR/runs/otseg-*/iter_*.pt) and evaluates OTSeg+ on the
demo world's test set under the default Sinkhorn (the reference's stopping rule) and under each faster mode, in the
same process, printing mIoU(S), mIoU(U), hIoU, the largest score difference from the default and the time.

    python research/demo_fast_modes.py --demo runs/demo [--limit 200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from otseg.demo.presets import DemoSettings
from otseg.demo.table import results_row
from otseg.demo.training import demo_datasets
from otseg.demo.world import world_dir
from otseg.eval.evaluate import evaluate
from otseg.model.inference_options import InferenceOptions
from otseg.model_files.open_model import load_model
from otseg.ops.sinkhorn_options import SinkhornOptions

MODES: dict[str, dict] = {
    "default (reference stop, thresh 1e-6, cap 100)": {},
    "log-domain updates": {"update": "log"},
    "thresh 1e-4": {"thresh": 1e-4},
    "fixed 50 iterations": {"fixed_iters": 50},
    "fixed 20 iterations": {"fixed_iters": 20},
    "fixed 10 iterations": {"fixed_iters": 10},
    "fixed 5 iterations": {"fixed_iters": 5},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default="runs/demo", help="output folder of `otseg demo`")
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (selects the world)")
    parser.add_argument("--limit", type=int, default=None, help="first N test images only")
    parser.add_argument("--settings", default="inductive,transductive,fully")
    args = parser.parse_args()
    torch.set_num_threads(1)

    cfg = DemoSettings.full(args.seed)
    _, val_set = demo_datasets(cfg, world_dir(cfg.world))
    if args.limit:
        val_set.samples = val_set.samples[: args.limit]
    print(f"{len(val_set)} test images; OTSeg+ (ensemble 0.5); torch threads 1\n")
    print("| setting | Sinkhorn mode | mIoU(S) | mIoU(U) | hIoU | max |score - default| | s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for setting in args.settings.split(","):
        runs = Path(args.demo) / "runs" / f"otseg-{setting}"
        ckpts = sorted(runs.glob("iter_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        if not ckpts:
            print(f"| {setting} | (no checkpoint in {runs}) | | | | | |")
            continue
        model = load_model(ckpts[-1]).eval()
        probe = torch.stack([val_set[i]["image"] for i in range(min(8, len(val_set)))])
        reference = model.predict_scores(probe, options=InferenceOptions(ensemble_weight=0.5))
        for name, settings in MODES.items():
            options = InferenceOptions(ensemble_weight=0.5, sinkhorn=SinkhornOptions(**settings))  # OTSeg+
            t0 = time.perf_counter()
            metrics = evaluate(model, val_set, progress=False, options=options)
            seconds = time.perf_counter() - t0
            moved = (model.predict_scores(probe, options=options) - reference).abs().max().item()
            r = results_row("otseg+", setting, metrics)
            print(
                f"| {setting} | {name} | {r['miou_seen']:.2f} | {r['miou_unseen']:.2f} | {r['hiou']:.2f} | "
                f"{moved:.1e} | {seconds:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
