"""`otseg demo` for one seed: the miniature zero-shot benchmark, end to end, on a CPU.

Stages: generate the world (cached), unpack the shipped tiny CLIP (or pretrain one for a non-default recipe;
cached), train ZegCLIP-style and OTSeg models in the inductive, transductive and fully supervised settings with
the regular `Trainer`, evaluate every method with the regular `evaluate`, evaluate the control (OTSeg+ with the
unseen classes' names replaced by made-up words), print the table, and write `results.json`,
`demo_info.json` and PNG panels to the output folder.

The six training runs are independent jobs (`otseg.demo.jobs`; a transductive run waits for its inductive
checkpoint) and run in parallel worker processes, one thread each by default (`otseg.demo.scheduler`): models this
small keep one core busy with one thread, while two threads on one model mostly wait for each other. The results do
not depend on the schedule. Each finished job's results are kept in its folder (`otseg.demo.job_results`), and each
run keeps a checkpoint at every held-out evaluation, so an interrupted demo run again into the same folder reads
back the finished jobs and resumes the others (`train_demo_model`), with the same results as an uninterrupted run.
The table is `otseg.demo.table`, the pictures `otseg.demo.panels`, several seeds `otseg.demo.seeds` and the
command line `otseg.demo.command`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from otseg.demo.card import world_card
from otseg.demo.curves import CONVERGED_BELOW_POINTS, last_fraction_change, plot_curves, trend_change
from otseg.demo.jobs import JobContext, demo_jobs
from otseg.demo.panels import NUM_PANELS, panel_indices, write_panels
from otseg.demo.presets import DemoSettings
from otseg.demo.scheduler import default_workers, run_jobs
from otseg.demo.table import format_table, table_order
from otseg.demo.tiny_clip import tiny_clip_path
from otseg.demo.training import demo_datasets
from otseg.demo.world import CLASS_NAMES, seen_ids, unseen_ids, world_dir
from otseg.errors import BadValueError
from otseg.utils import atomic_write_text

__all__ = ["run_demo"]


def _print_card(card: dict[str, Any]) -> None:
    free = card["training_free"]
    print(
        "[world card] measured before any method is trained:\n"
        f"  tiny CLIP pretraining: {card['tiny_clip_pretraining']}\n"
        f"  text geometry (the reference's 6 templates): prompt spread ratio {card['prompt_spread_ratio']:.2f}, "
        f"between-class cosine {card['between_class_cosine']:.2f} (within-class {card['within_class_cosine']:.2f}); "
        "released CLIP embeddings: 0.37-0.48 and 0.79-0.84\n"
        f"  headroom: a linear probe on the frozen patch features (all classes, fully supervised) reaches "
        f"{card['linear_probe_miou']:.1f} mIoU\n"
        f"  training-free (frozen patches vs prompts, cosine): mIoU(S) {free['miou_seen']:.1f}, "
        f"mIoU(U) {free['miou_unseen']:.1f}, hIoU {free['hiou']:.1f}",
        flush=True,
    )


def run_demo(
    out_dir: str | Path,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    settings: DemoSettings | None = None,
    workers: int | None = None,
    threads: int | None = None,
    schedule: str = "fast",
) -> list[dict[str, Any]]:
    """Run the miniature benchmark and return the results rows (also written to `out_dir/results.json`).

    Args:
        out_dir: receives results.json, demo_info.json (world card, settings, timings, per-class IoU, rows without
            the seen-class bias, training curves), table.md, curves.png, panels/*.png and the training work folders
            (runs/<arch>-<setting>/).
        seed: seeds the world, every training run and the control's made-up names (the tiny CLIP is one fixed
            model for every seed).
        quick: a seconds-long smoke run (tiny sizes, meaningless numbers).
        progress: progress bars (stage messages are printed either way).
        settings: explicit sizes (overrides `seed` and `quick`).
        workers: parallel training processes (default: `default_workers()`); 1 trains in this process.
        threads: torch threads of each training process (default: CPU cores / workers).
        schedule: the training lengths (`SCHEDULES`): "fast" (the 15-minute main job), "long" or "longer" (twice
            and four times the iterations, for curves that level off). Ignored with `quick` or `settings`.
    """
    t_start = time.perf_counter()
    cfg = settings or DemoSettings.for_run(seed, quick, schedule)
    seed = cfg.world.seed
    workers = default_workers() if workers is None else workers
    if workers < 1 or (threads is not None and threads < 1):
        raise BadValueError(f"--workers and --threads must be at least 1, got {workers} and {threads}")
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 2)

    lengths = f"{cfg.recipe.iters_for('zegclip')} / {cfg.recipe.iters_for('otseg')} iterations (ZegCLIP-style / OTSeg)"
    print(f"otseg demo: miniature zero-shot benchmark, seed {seed}{' (quick)' if quick else ''}; {lengths}", flush=True)
    t0 = time.perf_counter()
    root = world_dir(cfg.world)
    stage("world", t0)
    print(f"[world] {root} ({timings['world']:.1f}s)", flush=True)

    t0 = time.perf_counter()
    clip_file = tiny_clip_path(cfg.world, cfg.clip, progress=progress)
    stage("tiny_clip", t0)
    clip_info_file = clip_file.with_suffix(".json")
    clip_info = json.loads(clip_info_file.read_text(encoding="utf-8")) if clip_info_file.is_file() else {}
    source = clip_info.get("source", "pretrained here")
    print(f"[tiny CLIP] {clip_file} ({source}; {timings['tiny_clip']:.1f}s)", flush=True)
    if "zero_shot" in clip_info:
        zs = clip_info["zero_shot"]
        print(
            f"[tiny CLIP] zero-shot single-object accuracy: seen {zs['accuracy_seen']:.1f}%, "
            f"unseen {zs['accuracy_unseen']:.1f}% (chance {100 / len(CLASS_NAMES):.1f}%)",
            flush=True,
        )

    t0 = time.perf_counter()
    card = world_card(root, clip_file)
    stage("world card", t0)
    _print_card(card)

    _, val_set = demo_datasets(cfg, root)
    panel_ids = tuple(panel_indices(val_set, min(NUM_PANELS, len(val_set))))
    ctx = JobContext(cfg, root, clip_file, out, panel_ids)
    jobs = demo_jobs()
    print(f"[train] {len(jobs)} models, {workers} at a time, {threads} thread(s) each", flush=True)
    t0 = time.perf_counter()
    job_results = run_jobs(jobs, ctx, workers, threads, progress)
    stage("training and evaluation (wall)", t0)

    results: dict[tuple[str, str], dict[str, Any]] = {("training-free", "inductive"): card["training_free"]}
    rows_bias0: list[dict[str, Any]] = [card["training_free"]]
    per_class: dict[str, dict[str, Any]] = {}
    predictions: dict[tuple[str, str], list[np.ndarray]] = {}
    curves: dict[str, list[tuple[int, float]]] = {}
    for job in jobs:
        r = job_results[job.name]
        results.update({(row["method"], row["setting"]): row for row in r["rows"]})
        rows_bias0.extend(r["rows_bias0"])
        per_class.update(r["per_class"])
        predictions.update(r["predictions"])
        timings.update(r["timings"])
        curves[job.name] = [(step, value) for step, value in r["curve"]]
    rows = [results[key] for key in table_order()]
    t0 = time.perf_counter()
    panels = write_panels(out, val_set, panel_ids, predictions)
    curves_png = plot_curves(
        curves,
        out / "curves.png",
        f"seed {seed}: seen mIoU (%) on the held-out seen-only split during training (no seen-class bias)",
    )
    stage("panels", t0)
    convergence = {name: last_fraction_change(curve) for name, curve in curves.items()}
    trends = {name: trend_change(curve) for name, curve in curves.items()}
    timings["total"] = round(time.perf_counter() - t_start, 2)

    title = (
        f"Miniature zero-shot benchmark, seed {seed}: {len(CLASS_NAMES)} classes ({len(seen_ids())} seen / "
        f"{len(unseen_ids())} unseen), {len(val_set)} test images; mIoU in %"
    )
    table = format_table(rows, title)
    print()
    print(table)
    print("\nConvergence: seen mIoU on the held-out split over the last 20 % of training, points")
    print(f"  largest change from the end (converged: < {CONVERGED_BELOW_POINTS:g}): " +
          ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in convergence.items()))  # fmt: skip
    trend_text = (f"{k} {'-' if t is None else f'{t[0]:+.2f} (sd {t[1]:.2f})'}" for k, t in trends.items())
    print("  trend (a line through the last 40 % of evaluations) and the evaluations' scatter around it: " +
          ", ".join(trend_text))  # fmt: skip
    moving = [k for k, v in convergence.items() if v is not None and v >= CONVERGED_BELOW_POINTS]
    if moving and not quick:
        print(f"  still moving (>= {CONVERGED_BELOW_POINTS:g} point): {', '.join(moving)}; see curves.png" +
              ("" if cfg.recipe.schedule_name() == "longer" else
               " (--schedule long / longer train every method twice / four times as long)"))  # fmt: skip
    ind = {r["method"]: r for r in rows if r["setting"] == "inductive"}
    gap = None
    if ind["otseg+"]["miou_unseen"] is not None and ind["control"]["miou_unseen"] is not None:
        gap = round(ind["otseg+"]["miou_unseen"] - ind["control"]["miou_unseen"], 2)
        print(f"OTSeg+ inductive mIoU(U) minus the control's: {gap:+.1f} points (the text encoder's knowledge)")
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(out / "table.md", table + "\n")
    info = {
        "seed": seed,
        "quick": quick,
        # Jobs read back from an earlier, interrupted run of this folder (`run_jobs`); their timings are that run's.
        "reused_jobs": [job.name for job in jobs if job_results[job.name].get("reused")],
        "schedule": cfg.recipe.schedule_name(),
        "world_card": card,
        "rows_bias0": rows_bias0,
        "curves": {k: [list(p) for p in v] for k, v in curves.items()},
        "convergence_last20_points": convergence,
        # (change of the fitted line over the last 20 %, scatter of the evaluations around it): `trend_change`
        "convergence_trend_last20_points": {
            k: None if t is None else [round(t[0], 2), round(t[1], 2)] for k, t in trends.items()
        },
        "settings": {"world": cfg.world.to_dict(), "clip": asdict(cfg.clip), "recipe": asdict(cfg.recipe)},
        "world_dir": str(root),
        "tiny_clip": str(clip_file),
        "tiny_clip_info": clip_info,
        "classes": list(CLASS_NAMES),
        "unseen": [CLASS_NAMES[i] for i in unseen_ids()],
        "control_gap_unseen": gap,
        "timings_s": timings,
        "per_class_iou": per_class,
        "panels": [str(p) for p in panels],
        "curves_png": str(curves_png),
        "workers": workers,
        "threads_per_worker": threads,
        "cpu_count": os.cpu_count(),
    }
    atomic_write_text(out / "demo_info.json", json.dumps(info, indent=2) + "\n")
    print(
        f"\nwrote {out / 'results.json'}, {out / 'table.md'}, {out / 'demo_info.json'}, {curves_png.name} and "
        f"{len(panels)} panels in {out / 'panels'}; total {timings['total']:.0f}s",
        flush=True,
    )
    return rows
