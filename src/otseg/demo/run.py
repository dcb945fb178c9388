"""`otseg demo`: the miniature zero-shot benchmark, end to end, on a CPU.

Stages: generate the world (cached), unpack the shipped tiny CLIP (or pretrain one for a non-default recipe;
cached), train ZegCLIP-style and OTSeg models in the inductive, transductive and fully supervised settings with
the regular `Trainer`, evaluate every method with the regular `evaluate`, evaluate the control (OTSeg+ with the
unseen classes' names replaced by made-up words), print the table, and write `results.json`,
`demo_info.json` and PNG panels to the output folder.

The six training runs are independent jobs (a transductive run waits for its inductive checkpoint) and run in
parallel worker processes, one thread each by default: models this small keep one core busy with one thread,
while two threads on one model mostly wait for each other. The results do not depend on the schedule. Each finished
job's results are kept in its folder (`otseg.demo.job_results`), and each run keeps a checkpoint at every held-out
evaluation, so an interrupted demo run again into the same folder reads back the finished jobs and resumes the
others (`train_demo_model`), with the same results as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from otseg.config import Setting
from otseg.demo.card import world_card
from otseg.demo.curves import CONVERGED_BELOW_POINTS, last_fraction_change, plot_curves, trend_change
from otseg.demo.job_results import load_job_result, save_job_result
from otseg.demo.presets import (
    METHODS,
    SCHEDULES,
    SETTINGS,
    DemoRecipe,
    DemoSettings,
    demo_train_config,
    training_arch,
    transductive_init_step,
)
from otseg.demo.pretrained import save_demo_model
from otseg.demo.tiny_clip import tiny_clip_path
from otseg.demo.training import demo_datasets, demo_holdout_set, logged_evaluations, train_demo_model
from otseg.demo.world import CLASS_NAMES, GENERATOR_VERSION, seen_ids, unseen_ids, world_dir
from otseg.eval.evaluate import evaluate
from otseg.eval.metrics import ConfusionMatrix, compute_metrics
from otseg.formats.openai_clip import read_clip_state_dict
from otseg.model.segmentor import OTSeg
from otseg.utils import atomic_write_text
from otseg.version import __version__
from otseg.viz import label_map_panel

__all__ = [
    "DemoJob",
    "DemoSettings",
    "JobContext",
    "add_demo_parser",
    "cmd_demo",
    "control_names",
    "demo_jobs",
    "format_table",
    "run_demo",
    "run_demo_seeds",
    "run_job",
]

METHOD_TITLES = {
    "training-free": "training-free",
    "zegclip": "ZegCLIP",
    "otseg": "OTSeg",
    "otseg+": "OTSeg+",
    "control": "control",
}
NUM_PANELS = 4


# ---- helpers ----------------------------------------------------------------------------------------------


def _split_miou(per_class: dict[str, float | None], ids: Sequence[int]) -> float | None:
    """Mean IoU over `ids`, leaving out classes absent from both ground truth and prediction (mmseg's rule)."""
    values = [per_class[CLASS_NAMES[i]] for i in ids]
    present = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(present)) if present else None


def _row(method: str, setting: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """One results row. mIoU(S)/(U) always use the world's 12/4 split, also for the fully supervised models
    (which treat every class as seen), as the paper's fully supervised rows do."""
    per_class = metrics["per_class_iou"]
    s = _split_miou(per_class, seen_ids())
    u = _split_miou(per_class, unseen_ids())
    h = None if s is None or u is None else (0.0 if s + u == 0 else 2 * s * u / (s + u))

    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {
        "method": method,
        "setting": setting,
        "miou_seen": rounded(s),
        "miou_unseen": rounded(u),
        "hiou": rounded(h),
    }


def format_table(rows: Sequence[dict[str, Any]], title: str = "") -> str:
    """The results as a Markdown table, in the paper's layout (method, setting, mIoU(S), mIoU(U), hIoU)."""

    def cell(r: dict[str, Any], key: str) -> str:
        v, std = r[key], r.get(f"{key}_std")
        if v is None:
            return "-"
        return f"{v:.1f} ± {std:.1f}" if std is not None else f"{v:.1f}"

    lines = [title] if title else []
    lines += ["| method | setting | mIoU(S) | mIoU(U) | hIoU |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {METHOD_TITLES.get(r['method'], r['method'])} | {r['setting']} | {cell(r, 'miou_seen')} | "
            f"{cell(r, 'miou_unseen')} | {cell(r, 'hiou')} |"
        )
    return "\n".join(lines)


def _panel_indices(val_set: Any, count: int) -> list[int]:
    """The first `count` test images that contain an unseen class (the interesting ones), else the first ones."""
    unseen = set(unseen_ids())
    chosen = []
    for i in range(len(val_set)):
        label = val_set.load_label(i)
        if unseen & {int(v) for v in np.unique(label)}:
            chosen.append(i)
        if len(chosen) == count:
            return chosen
    rest = [i for i in range(len(val_set)) if i not in chosen]
    return (chosen + rest)[:count]


@torch.no_grad()
def _predict_labels(model: OTSeg, val_set: Any, indices: Sequence[int]) -> list[np.ndarray]:
    out = []
    for i in indices:
        scores = model.predict_scores(val_set[i]["image"][None])
        out.append(scores.argmax(1)[0].numpy().astype(np.uint8))
    return out


def _write_panels(
    out_dir: Path, val_set: Any, indices: Sequence[int], predictions: dict[tuple[str, str], list[np.ndarray]]
) -> list[Path]:
    """One PNG per (setting, test image): image | ground truth | each method's prediction, with a legend.

    Predictions are shown on the scored pixels only: background is not a class (label 255), so what a model says
    there is not measured, and drawing it would hide the objects.
    """
    scale = 4  # 64 px images are too small to read
    paths = []
    panel_dir = out_dir / "panels"
    panel_dir.mkdir(parents=True, exist_ok=True)
    for setting in SETTINGS:
        methods = [m for m in (*METHODS, "control") if (m, setting) in predictions]
        if not methods:
            continue
        for j, i in enumerate(indices):
            image = val_set.load_image(i)
            gt = val_set.load_label(i)
            maps = [gt]
            for m in methods:
                pred = predictions[(m, setting)][j].copy()
                pred[gt == 255] = 255
                maps.append(pred)
            big = np.kron(image, np.ones((scale, scale, 1), np.uint8))
            big_maps = [np.kron(m, np.ones((scale, scale), np.uint8)) for m in maps]
            titles = ["image", "ground truth", *[f"{METHOD_TITLES[m]}" for m in methods]]
            panel = label_map_panel(big, big_maps, CLASS_NAMES, titles=titles)
            path = panel_dir / f"{setting}_{Path(val_set.samples[i][0]).stem}.png"
            panel.save(path)
            paths.append(path)
    # The legend marks unseen classes: a reader needs the split to read the pictures.
    split_note = "unseen classes: " + ", ".join(CLASS_NAMES[i] for i in unseen_ids())
    (panel_dir / "README.txt").write_text(
        "image | ground truth | predictions (background pixels are not scored and left black)\n" + split_note + "\n",
        encoding="utf-8",
    )
    return paths


# ---- the training jobs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoJob:
    """One training run of the demo: a trained architecture in one setting, and the methods scored on it."""

    arch: str  # "zegclip" or "otseg" (`training_arch`)
    setting: Setting  # "inductive", "transductive" or "fully"

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.setting}"

    @property
    def methods(self) -> list[str]:
        return [m for m in METHODS if training_arch(m) == self.arch]

    @property
    def depends_on(self) -> DemoJob | None:
        """Transductive runs start from the inductive run's checkpoint at half its schedule."""
        return DemoJob(self.arch, "inductive") if self.setting == "transductive" else None

    def iters(self, recipe: DemoRecipe) -> int:
        return demo_train_config(self.arch, self.setting, recipe).max_iters


def demo_jobs() -> list[DemoJob]:
    """The six runs, in the order workers take them up: the longest first (the baseline's runs, twice as many
    steps as OTSeg's at about 0.6 of the cost each), the transductive ones last, as they wait for their inductive
    checkpoint."""
    order: list[tuple[str, Setting]] = [
        ("zegclip", "inductive"), ("otseg", "inductive"), ("zegclip", "fully"), ("otseg", "fully"),
    ]  # fmt: skip
    order += [("zegclip", "transductive"), ("otseg", "transductive")]
    return [DemoJob(a, s) for a, s in order]


@dataclass(frozen=True)
class JobContext:
    """What a job needs: the demo's sizes, the written world, the tiny CLIP file, the output folder and the test
    images drawn as panels. Picklable, so a worker process can take it."""

    settings: DemoSettings
    world_root: Path
    clip_file: Path
    out: Path
    panel_ids: tuple[int, ...]


def control_names(seed: int) -> list[str]:
    """The world's class names with each unseen name replaced by a made-up two-word name (seeded): words the
    tiny CLIP never read, so their embeddings carry no knowledge of the class they stand for."""
    rng = np.random.default_rng((seed, 99))
    consonants, vowels = list("bcdfghjklmnpqrstvwxz"), list("aeiou")

    def word() -> str:
        return "".join(str(rng.choice(consonants if i % 2 == 0 else vowels)) for i in range(5))

    names = list(CLASS_NAMES)
    for i in unseen_ids():
        names[i] = f"{word()} {word()}"
    return names


def _control_embeddings(model: Any, seed: int) -> torch.Tensor:
    """Class embeddings for the control: the seen classes' as they are, the unseen classes' from made-up names
    (`control_names`), through the same text tower and prompt templates."""
    model.set_classes(control_names(seed))
    return model.class_embeddings.clone()


def _job_folder(job: DemoJob, ctx: JobContext) -> Path:
    """A job's training folder (checkpoints, the trainer's log, its `result.json`)."""
    return ctx.out / "runs" / job.name


def _start_checkpoint(job: DemoJob, ctx: JobContext) -> Path | None:
    """The checkpoint a transductive job starts from (its inductive job's at half schedule); None for the others."""
    base = job.depends_on
    if base is None:
        return None
    return _job_folder(base, ctx) / f"iter_{transductive_init_step(ctx.settings.recipe, base.arch)}.pt"


def run_job(
    job: DemoJob,
    ctx: JobContext,
    on_step: Callable[[int], object] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one job's model and score its methods (and, for OTSeg inductive, the control; it also stores the
    built-in demo model). Returns rows (and, for inductive runs, rows without the seen-class bias), per-class IoU,
    the held-out curve, the panel images' label maps and timings."""
    cfg = ctx.settings
    train_set, val_set = demo_datasets(cfg, ctx.world_root)
    holdout_set = demo_holdout_set(cfg, ctx.world_root)
    start = _start_checkpoint(job, ctx)
    init_from = None if start is None else str(start)
    step = [0]
    curve: list[tuple[int, float]] = []

    def count_step(n: int) -> None:
        step[0] = n
        if on_step is not None:
            on_step(n)

    def holdout_eval(model: Any) -> dict[str, Any]:
        value = holdout_seen_miou(model, holdout_set)
        curve.append((step[0], round(value, 2)))
        return {"holdout_miou_seen": value}

    resumed_at: list[int] = []
    work = _job_folder(job, ctx)
    t0 = time.perf_counter()
    model = train_demo_model(
        cfg, job.methods[-1], job.setting, read_clip_state_dict(ctx.clip_file), train_set, work, init_from,
        progress=progress, on_step=count_step, evaluate=holdout_eval, on_resume=resumed_at.append,
    )  # fmt: skip
    if resumed_at:  # the evaluations before the interruption are in the trainer's log
        have = {s for s, _ in curve}
        earlier = logged_evaluations(work)
        curve += [(s, round(v["holdout_miou_seen"], 2)) for s, v in earlier.items()
                  if s <= resumed_at[0] and s not in have and "holdout_miou_seen" in v]  # fmt: skip
        curve.sort()
    result: dict[str, Any] = {"rows": [], "rows_bias0": [], "per_class": {}, "predictions": {}, "timings": {}}
    result["timings"][f"train {job.name}"] = round(time.perf_counter() - t0, 2)
    result["curve"] = curve
    result["resumed_at"] = resumed_at[0] if resumed_at else None

    def score(method: str, setting: str) -> None:
        t_eval = time.perf_counter()
        metrics = evaluate(model, val_set, progress=False)
        result["rows"].append(_row(method, setting, metrics))
        result["per_class"][f"{method} {setting}"] = metrics["per_class_iou"]
        result["predictions"][(method, setting)] = _predict_labels(model, val_set, ctx.panel_ids)
        if setting == "inductive" and model.config.apply_seen_bias and model.head.cfg.seen_bias:
            result["rows_bias0"].append(_row(method, setting, unbiased_metrics(model, val_set)))
        result["timings"][f"eval {method} {setting}"] = round(time.perf_counter() - t_eval, 2)

    for method in job.methods:
        model.head.cfg.ensemble_weight = 0.5 if method == "otseg+" else 1.0
        score(method, job.setting)
    if job == DemoJob("otseg", "inductive"):
        # The model behind Predictor.from_pretrained("demo") / `otseg segment --model demo` (OTSeg+ inductive).
        model.head.cfg.ensemble_weight = 0.5
        save_demo_model(model, cfg)
        # The control: OTSeg+ with the unseen classes' names replaced by made-up words, whose embeddings carry no
        # knowledge of those classes; the seen classes, the prompts and the seen-class bias are unchanged. (Random
        # unit vectors would be out of the text tower's distribution: sigmoid scores near 0.5 that win even on
        # seen pixels, which would charge the control for more than missing knowledge.)
        model.set_class_embeddings(_control_embeddings(model, cfg.world.seed), CLASS_NAMES, seen=seen_ids())
        score("control", "inductive")
    return result


def unbiased_metrics(model: Any, dataset: Any, batch_size: int = 50) -> dict[str, Any]:
    """`compute_metrics` of `model` on `dataset` without the seen-class bias, the world's 12/4 split.

    The images are scored in batches (the world's images are all one crop in size, so each is one window of the
    regular slide inference); a class absent from both the ground truth and the predictions is left out, as in
    `evaluate`. The model's mode and bias are restored afterwards.
    """
    everything, _ = _unbiased_confusions(model, dataset, batch_size, seen_only_too=False)
    return _world_metrics(everything)


def unbiased_and_seen_only_metrics(model: Any, dataset: Any, batch_size: int = 50) -> tuple[dict, dict]:
    """`unbiased_metrics`, and from the same scores the metrics with each pixel sent to the best of the 12 seen
    classes, the classes inductive training scores (a diagnostic of the held-out curve, bench/)."""
    everything, seen_only = _unbiased_confusions(model, dataset, batch_size, seen_only_too=True)
    assert seen_only is not None
    return _world_metrics(everything), _world_metrics(seen_only)


def _world_metrics(cm: ConfusionMatrix) -> dict[str, Any]:
    return compute_metrics(cm, list(CLASS_NAMES), seen=list(seen_ids()), unseen=list(unseen_ids()))


@torch.no_grad()
def _unbiased_confusions(
    model: Any, dataset: Any, batch_size: int, seen_only_too: bool
) -> tuple[ConfusionMatrix, ConfusionMatrix | None]:
    """One bias-free pass of `model` over `dataset` (see `unbiased_metrics`): the confusion matrix of the argmax over
    every class and, with `seen_only_too`, of the argmax over the seen classes alone."""
    unseen = torch.tensor(unseen_ids())
    was_training = model.training
    bias = model.head.cfg.seen_bias
    model.eval()
    model.head.cfg.seen_bias = 0.0
    everything = ConfusionMatrix(model.num_classes)
    seen_only = ConfusionMatrix(model.num_classes) if seen_only_too else None
    try:
        for start in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            scores = model.predict_scores(torch.stack([s["image"] for s in samples]))
            labels = torch.stack([s["label"] for s in samples])
            if scores.shape[-2:] != labels.shape[-2:]:
                scores = F.interpolate(scores, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
            everything.update(scores.argmax(1), labels)
            if seen_only is not None:
                scores[:, unseen] = -math.inf
                seen_only.update(scores.argmax(1), labels)
    finally:
        model.head.cfg.seen_bias = bias
        model.train(was_training)
    return everything, seen_only


def holdout_seen_miou(model: Any, holdout_set: Any) -> float:
    """Seen-class mIoU (%) on the held-out seen-only split, without the seen-class bias: how much the model has
    learnt, the quantity whose flattening shows convergence (the bias is a test-time shift, applied after
    training)."""
    return float(unbiased_metrics(model, holdout_set)["miou_seen"] or 0.0)


# A worker process's channel back to the parent: the number of training steps done since its last message.
_worker_queue: Any = None


def _init_worker(channel: Any, threads: int) -> None:
    global _worker_queue
    _worker_queue = channel
    torch.set_num_threads(threads)


def _run_job_in_worker(job: DemoJob, ctx: JobContext) -> dict[str, Any]:
    last = [0]

    def on_step(step: int) -> None:
        if step - last[0] >= 10:  # a message every 10 steps is plenty for a progress bar
            _worker_queue.put(step - last[0])
            last[0] = step

    result = run_job(job, ctx, on_step=on_step)
    _worker_queue.put(job.iters(ctx.settings.recipe) - last[0])
    return result


def _result_line(job: DemoJob, result: dict[str, Any]) -> str:
    seconds = result["timings"][f"train {job.name}"]
    parts = [
        f"{METHOD_TITLES[r['method']]} mIoU(S) {r['miou_seen']} mIoU(U) {r['miou_unseen']} hIoU {r['hiou']}"
        for r in result["rows"]
    ]
    resumed = result.get("resumed_at")
    how = f"resumed at iteration {resumed}, trained in" if resumed is not None else "trained in"
    return f"[done] {job.name} ({how} {seconds:.0f}s): " + "; ".join(parts)


def _bar_advancer(bar: Any) -> Callable[[int], None]:
    """An `on_step` that moves `bar` to the step reported (a resumed run's first report is a jump)."""
    reached = [0]

    def advance(step: int) -> None:
        bar.update(step - reached[0])
        reached[0] = step

    return advance


def _job_key(job: DemoJob, ctx: JobContext) -> dict[str, Any]:
    """What determines a job's results: the job, the code (otseg's version: results kept by another release are not
    reused), the world (and its generator), the tiny CLIP's recipe, the training recipe and the test images drawn
    as panels."""
    cfg = ctx.settings
    return {
        "job": job.name,
        "otseg_version": __version__,
        "world_version": GENERATOR_VERSION,
        "world": cfg.world.to_dict(),
        "clip": asdict(cfg.clip),
        "recipe": asdict(cfg.recipe),
        "panel_ids": list(ctx.panel_ids),
    }


def _finished_jobs(jobs: list[DemoJob], ctx: JobContext) -> dict[str, dict[str, Any]]:
    """The jobs that finished in an earlier run of this output folder with the same settings, and their results.

    An inductive job is counted only if its transductive job is finished too or the checkpoint that job starts
    from is still there.
    """
    finished = {}
    for job in jobs:
        result = load_job_result(_job_folder(job, ctx), _job_key(job, ctx))
        if result is not None:
            finished[job.name] = result
    for job in jobs:
        base, start = job.depends_on, _start_checkpoint(job, ctx)
        if base is None or start is None or job.name in finished or base.name not in finished:
            continue
        if not start.is_file():
            del finished[base.name]
    return finished


def _run_jobs(
    jobs: list[DemoJob], ctx: JobContext, workers: int, threads: int, progress: bool
) -> dict[str, dict[str, Any]]:
    """Run the jobs, `workers` at a time (in this process when 1), with one progress bar over all their steps.

    Resumable: each finished job's results are saved in its folder (`save_job_result`), and a job that finished
    in an earlier run of the same output folder with the same settings is read back, not trained again (its
    result carries ``"reused": True``).
    """
    recipe = ctx.settings.recipe
    total = sum(j.iters(recipe) for j in jobs)
    bar = tqdm(total=total, desc=f"training {len(jobs)} models", unit="it", dynamic_ncols=True, disable=not progress)
    say = bar.write if progress else (lambda text: print(text, flush=True))
    done: dict[str, dict[str, Any]] = {}
    finished = _finished_jobs(jobs, ctx)
    for job in jobs:
        if job.name in finished:
            done[job.name] = {**finished[job.name], "reused": True}
            bar.update(job.iters(recipe))
            say(f"[reuse] {job.name}: finished earlier in {_job_folder(job, ctx)} with the same settings "
                "(delete that folder to train it again)")  # fmt: skip
    jobs = [job for job in jobs if job.name not in done]

    def finish(job: DemoJob, result: dict[str, Any]) -> None:
        done[job.name] = result
        save_job_result(_job_folder(job, ctx), _job_key(job, ctx), result)
        say(_result_line(job, result))

    try:
        if not jobs:
            return done
        if workers <= 1:
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                for job in jobs:
                    say(f"[start] {job.name}: {job.iters(recipe)} iterations")
                    finish(job, run_job(job, ctx, on_step=_bar_advancer(bar)))
            finally:
                torch.set_num_threads(previous)
            return done
        mp = multiprocessing.get_context("spawn")  # fork after torch has started its thread pools can hang
        channel = mp.Queue()
        pool = mp.Pool(workers, initializer=_init_worker, initargs=(channel, threads))
        try:
            pending = list(jobs)
            running: dict[str, tuple[DemoJob, AsyncResult[dict[str, Any]]]] = {}
            while pending or running:
                for job in list(pending):
                    if len(running) >= workers:
                        break
                    if job.depends_on is None or job.depends_on.name in done:
                        pending.remove(job)
                        running[job.name] = (job, pool.apply_async(_run_job_in_worker, (job, ctx)))
                        say(f"[start] {job.name}: {job.iters(recipe)} iterations")
                try:
                    bar.update(channel.get(timeout=0.2))
                    while True:
                        bar.update(channel.get_nowait())
                except queue.Empty:
                    pass
                for name, (job, handle) in list(running.items()):
                    if handle.ready():
                        del running[name]
                        finish(job, handle.get())  # get() re-raises a worker's exception here
            pool.close()
        finally:
            pool.terminate()  # after an error or Ctrl-C, do not wait minutes for the other runs to finish
            pool.join()
        return done
    finally:
        bar.close()


# ---- the run ----------------------------------------------------------------------------------------------


def default_workers() -> int:
    """Parallel training processes: one per core, at most four (the dependencies allow little more)."""
    return max(1, min(4, os.cpu_count() or 1))


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
        raise ValueError(f"--workers and --threads must be at least 1, got {workers} and {threads}")
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
    panel_ids = tuple(_panel_indices(val_set, min(NUM_PANELS, len(val_set))))
    ctx = JobContext(cfg, root, clip_file, out, panel_ids)
    jobs = demo_jobs()
    print(f"[train] {len(jobs)} models, {workers} at a time, {threads} thread(s) each", flush=True)
    t0 = time.perf_counter()
    job_results = _run_jobs(jobs, ctx, workers, threads, progress)
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
    panels = _write_panels(out, val_set, panel_ids, predictions)
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
        # Jobs read back from an earlier, interrupted run of this folder (`_run_jobs`); their timings are that run's.
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


def table_order() -> list[tuple[str, str]]:
    """(method, setting) of the table's rows, in order: per setting, the methods; inductive also has the
    training-free row first and the control last."""
    order: list[tuple[str, str]] = []
    for setting in SETTINGS:
        methods = [*METHODS]
        if setting == "inductive":
            methods = ["training-free", *methods, "control"]
        order += [(m, setting) for m in methods]
    return order


_METRICS = ("miou_seen", "miou_unseen", "hiou")


def aggregate_rows(per_seed: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of each cell over seeds: rows with `miou_seen` (the mean),
    `miou_seen_std`, ... and `per_seed` (each seed's values)."""
    out = []
    for i, first in enumerate(per_seed[0]):
        row: dict[str, Any] = {"method": first["method"], "setting": first["setting"]}
        for key in _METRICS:
            values = [rows[i][key] for rows in per_seed if rows[i][key] is not None]
            row[key] = round(float(np.mean(values)), 2) if values else None
            row[f"{key}_std"] = round(float(np.std(values, ddof=1)), 2) if len(values) > 1 else None
        row["per_seed"] = [{k: rows[i][k] for k in _METRICS} for rows in per_seed]
        out.append(row)
    return out


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
        raise ValueError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
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


# ---- command line -----------------------------------------------------------------------------------------


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `otseg demo` on an argparse subparsers object."""
    p = subparsers.add_parser(
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
    p.set_defaults(func=cmd_demo)
    return p


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


def cmd_demo(args: argparse.Namespace) -> int:
    if args.seeds is not None:
        run_demo_seeds(
            args.out,
            args.seeds,
            quick=args.quick,
            progress=not args.no_progress,
            workers=args.workers,
            threads=args.threads,
            schedule=args.schedule,
        )
        return 0
    run_demo(
        args.out,
        seed=args.seed,
        quick=args.quick,
        progress=not args.no_progress,
        workers=args.workers,
        threads=args.threads,
        schedule=args.schedule,
    )
    return 0
