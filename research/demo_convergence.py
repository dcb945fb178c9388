"""The convergence of finished `otseg demo` runs, as a markdown table: for each run folder given and each of its six
training runs, the held-out seen mIoU at the end, its largest change from the end over the last 20 % of training
(the issue's test: converged below 1 point), the trend over the last 20 % (a line through the last 40 % of
evaluations) and the evaluations' scatter around that line (`otseg.demo.curves`). Reads each folder's
demo_info.json; trains nothing.

    python research/demo_convergence.py runs/seeds/seed_0 runs/seeds/seed_1 runs/seeds/seed_2 runs/long0 runs/longer0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from otseg.demo.curves import CONVERGED_BELOW_POINTS, last_fraction_change, trend_change


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="output folders of `otseg demo` (each with demo_info.json)")
    args = p.parse_args()
    print("| run | schedule | seed | training run | end | largest change | trend | scatter (sd) |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    counts = {"runs": 0, "largest": 0, "trend": 0}
    for folder in args.folders:
        info = json.loads((folder / "demo_info.json").read_text(encoding="utf-8"))
        for name, raw in info["curves"].items():
            curve = [(int(step), float(value)) for step, value in raw]
            largest = last_fraction_change(curve)
            trend = trend_change(curve)
            counts["runs"] += 1
            counts["largest"] += largest is not None and largest < CONVERGED_BELOW_POINTS
            counts["trend"] += trend is not None and abs(trend[0]) < CONVERGED_BELOW_POINTS
            trend_text = "- | -" if trend is None else f"{trend[0]:+.2f} | {trend[1]:.2f}"
            largest_text = "-" if largest is None else f"{largest:.2f}"
            print(
                f"| {folder.name} | {info.get('schedule')} | {info['seed']} | {name} | {curve[-1][1]:.1f} | "
                f"{largest_text} | {trend_text} |"
            )
    print(
        f"\n{counts['runs']} runs: largest change < {CONVERGED_BELOW_POINTS:g} point in {counts['largest']}; trend "
        f"within ±{CONVERGED_BELOW_POINTS:g} point in {counts['trend']}"
    )


if __name__ == "__main__":
    main()
