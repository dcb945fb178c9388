"""Running the demo's jobs: `workers` processes at a time (a transductive job waits for its inductive one), one
progress bar over all their steps, and resumption: each finished job's results are kept in its folder
(`otseg.demo.job_results`) and read back by a later run of the same output folder with the same settings.
The results do not depend on the schedule."""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.pool import AsyncResult
from typing import Any

import torch
from tqdm.auto import tqdm

from otseg.demo.job_results import load_job_result, save_job_result
from otseg.demo.jobs import DemoJob, JobContext, job_folder, run_job, start_checkpoint
from otseg.demo.table import METHOD_TITLES
from otseg.demo.world import GENERATOR_VERSION
from otseg.version import __version__

__all__ = ["default_workers", "finished_jobs", "job_key", "run_jobs"]


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


def job_key(job: DemoJob, ctx: JobContext) -> dict[str, Any]:
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


def finished_jobs(jobs: list[DemoJob], ctx: JobContext) -> dict[str, dict[str, Any]]:
    """The jobs that finished in an earlier run of this output folder with the same settings, and their results.

    An inductive job is counted only if its transductive job is finished too or the checkpoint that job starts
    from is still there.
    """
    finished = {}
    for job in jobs:
        result = load_job_result(job_folder(job, ctx), job_key(job, ctx))
        if result is not None:
            finished[job.name] = result
    for job in jobs:
        base, start = job.depends_on, start_checkpoint(job, ctx)
        if base is None or start is None or job.name in finished or base.name not in finished:
            continue
        if not start.is_file():
            del finished[base.name]
    return finished


def run_jobs(
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
    finished = finished_jobs(jobs, ctx)
    for job in jobs:
        if job.name in finished:
            done[job.name] = {**finished[job.name], "reused": True}
            bar.update(job.iters(recipe))
            say(f"[reuse] {job.name}: finished earlier in {job_folder(job, ctx)} with the same settings "
                "(delete that folder to train it again)")  # fmt: skip
    jobs = [job for job in jobs if job.name not in done]

    def finish(job: DemoJob, result: dict[str, Any]) -> None:
        done[job.name] = result
        save_job_result(job_folder(job, ctx), job_key(job, ctx), result)
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


def default_workers() -> int:
    """Parallel training processes: one per core, at most four (the dependencies allow little more)."""
    return max(1, min(4, os.cpu_count() or 1))
