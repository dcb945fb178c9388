"""`otseg demo --seeds`: the demo once per seed, then the table of means and standard deviations across seeds and
each seed's convergence; resumable (a seed already finished with the same settings is read back)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from otseg.demo.curves import CONVERGED_BELOW_POINTS, last_fraction_change, trend_change
from otseg.demo.presets import DemoSettings
from otseg.demo.run import run_demo
from otseg.demo.table import aggregate_rows, format_table
from otseg.errors import BadValueError
from otseg.utils import atomic_write_text

__all__ = ["run_demo_seeds", "seed_convergence"]


def _finished_rows(folder: Path, cfg: DemoSettings) -> list[dict[str, Any]] | None:
    """The results rows of a finished run in `folder` with settings `cfg`, else None."""
    try:
        info = json.loads((folder / "demo_info.json").read_text(encoding="utf-8"))
        rows = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    settings = {"world": cfg.world.to_dict(), "clip": asdict(cfg.clip), "recipe": asdict(cfg.recipe)}
    if json.loads(json.dumps(settings)) != info.get("settings") or not isinstance(rows, list):
        return None
    return rows


def run_demo_seeds(
    out_dir: str | Path,
    seeds: Sequence[int],
    quick: bool = False,
    progress: bool = True,
    workers: int | None = None,
    threads: int | None = None,
    schedule: str = "fast",
) -> list[dict[str, Any]]:
    """`run_demo` once per seed (in `out_dir/seed_<s>/`), then the table of means ± standard deviations across seeds
    in `out_dir/results.json` and `table.md` (each cell also lists the seeds' values).

    Resumable: a seed whose folder already holds the results of a finished run with the same settings is not run
    again (an interrupted multi-seed run picks up where it stopped).
    """
    if not seeds:
        raise BadValueError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
    out = Path(out_dir)
    t0 = time.perf_counter()
    per_seed = []
    for s in seeds:
        folder = out / f"seed_{s}"
        finished = _finished_rows(folder, DemoSettings.for_run(s, quick, schedule))
        if finished is not None:
            print(f"seed {s}: finished earlier with the same settings, results read from {folder}", flush=True)
            per_seed.append(finished)
            continue
        per_seed.append(
            run_demo(
                folder, seed=s, quick=quick, progress=progress, workers=workers, threads=threads, schedule=schedule
            )
        )
    rows = aggregate_rows(per_seed)
    title = f"Miniature zero-shot benchmark, seeds {', '.join(map(str, seeds))}: mean ± std over seeds, mIoU in %"
    table = format_table(rows, title)
    print()
    print(table)
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(out / "table.md", table + "\n")
    curves = seed_convergence(out, seeds)
    largest = [v[0] for runs in curves.values() for v in runs.values() if v[0] is not None]
    trend = [v[1] for runs in curves.values() for v in runs.values() if v[1] is not None]
    bound = CONVERGED_BELOW_POINTS
    print(f"\nheld-out curves converged (largest change over the last 20 % < {bound:g} point): "
          f"{sum(v < bound for v in largest)} of {len(largest)} runs; trend over the last 20 % within ±{bound:g} "
          f"point: {sum(abs(v) < bound for v in trend)} of {len(trend)} (per seed: seed_N/demo_info.json)")  # fmt: skip
    info = {"seeds": list(seeds), "seconds_total": round(time.perf_counter() - t0, 1), "convergence": curves}
    atomic_write_text(out / "seeds_info.json", json.dumps(info, indent=2) + "\n")
    print(f"\nwrote {out / 'results.json'} and {out / 'table.md'}; {len(seeds)} seeds in {info['seconds_total']:.0f}s")
    return rows


def seed_convergence(out_dir: Path, seeds: Sequence[int]) -> dict[str, dict[str, list[float | None]]]:
    """Per seed and run, [largest change over the last 20 %, trend over the last 20 %] of the held-out seen curve,
    from each seed's demo_info.json (`last_fraction_change`, `trend_change`)."""
    found: dict[str, dict[str, list[float | None]]] = {}
    for s in seeds:
        info = json.loads((out_dir / f"seed_{s}" / "demo_info.json").read_text(encoding="utf-8"))
        runs: dict[str, list[float | None]] = {}
        for name, curve in info["curves"].items():
            points = [(int(step), float(value)) for step, value in curve]
            trend = trend_change(points)
            runs[name] = [last_fraction_change(points), None if trend is None else round(trend[0], 2)]
        found[f"seed_{s}"] = runs
    return found
