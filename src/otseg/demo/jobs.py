"""The demo's training jobs: one trained architecture in one setting each (a transductive run starts from its
inductive run's checkpoint), and `run_job`, which trains one job's model and scores its methods."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otseg.config import Setting
from otseg.demo.panels import predict_labels
from otseg.demo.presets import (
    METHODS,
    DemoRecipe,
    DemoSettings,
    demo_train_config,
    training_arch,
    transductive_init_step,
)
from otseg.demo.pretrained import save_demo_model
from otseg.demo.scoring import control_embeddings, holdout_seen_miou, unbiased_metrics
from otseg.demo.table import results_row
from otseg.demo.training import demo_datasets, demo_holdout_set, logged_evaluations, train_demo_model
from otseg.demo.world import CLASS_NAMES, seen_ids
from otseg.eval.evaluate import evaluate
from otseg.formats.openai_clip import read_clip_state_dict
from otseg.model.inference_options import InferenceOptions

__all__ = ["DemoJob", "JobContext", "demo_jobs", "job_folder", "run_job", "start_checkpoint"]


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


def job_folder(job: DemoJob, ctx: JobContext) -> Path:
    """A job's training folder (checkpoints, the trainer's log, its `result.json`)."""
    return ctx.out / "runs" / job.name


def start_checkpoint(job: DemoJob, ctx: JobContext) -> Path | None:
    """The checkpoint a transductive job starts from (its inductive job's at half schedule); None for the others."""
    base = job.depends_on
    if base is None:
        return None
    return job_folder(base, ctx) / f"iter_{transductive_init_step(ctx.settings.recipe, base.arch)}.pt"


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
    start = start_checkpoint(job, ctx)
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
    work = job_folder(job, ctx)
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
        # One trained model, scored as each method: OTSeg and OTSeg+ differ only in the test-time ensemble weight,
        # given to the calls (the model's config stays the one it was trained with).
        options = InferenceOptions(ensemble_weight=0.5 if method in ("otseg+", "control") else 1.0)
        t_eval = time.perf_counter()
        metrics = evaluate(model, val_set, progress=False, options=options)
        result["rows"].append(results_row(method, setting, metrics))
        result["per_class"][f"{method} {setting}"] = metrics["per_class_iou"]
        result["predictions"][(method, setting)] = predict_labels(model, val_set, ctx.panel_ids, options)
        if setting == "inductive" and model.config.apply_seen_bias and model.head.cfg.seen_bias:
            result["rows_bias0"].append(results_row(method, setting, unbiased_metrics(model, val_set, options=options)))
        result["timings"][f"eval {method} {setting}"] = round(time.perf_counter() - t_eval, 2)

    for method in job.methods:
        score(method, job.setting)
    if job == DemoJob("otseg", "inductive"):
        # The model behind Predictor.from_pretrained("demo") / `otseg segment --model demo` (OTSeg+ inductive): it
        # was trained as this job's last method, OTSeg+, so its config's ensemble weight is OTSeg+'s 0.5.
        save_demo_model(model, cfg)
        # The control: OTSeg+ with the unseen classes' names replaced by made-up words, whose embeddings carry no
        # knowledge of those classes; the seen classes, the prompts and the seen-class bias are unchanged. (Random
        # unit vectors would be out of the text tower's distribution: sigmoid scores near 0.5 that win even on
        # seen pixels, which would charge the control for more than missing knowledge.)
        model.set_class_embeddings(control_embeddings(model, cfg.world.seed), CLASS_NAMES, seen=seen_ids())
        score("control", "inductive")
    return result
