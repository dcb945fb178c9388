"""Peak memory and time of ONE full training step (forward, backward, AdamW step) at each paper preset's shape,
the reference's dense losses against the lean ones, with and without activation checkpointing and bf16 autocast,
all in one run (`docs/training-memory.md`).

Shapes: VOC inductive (15 seen classes, 6 prompts, 10 VPT tokens, 512 px crop), PASCAL Context inductive
(49 / 8 / 10 / 480), COCO-Stuff inductive (156 / 8 / 100 / 512); the full ViT-B/16 with random weights (memory and
time do not depend on the values), per-device batch 1, 2, 4. Each (preset, batch, option) runs in a fresh
subprocess, so that peaks do not mix:

* step 1 warms up (lazy initialisation, the optimizer's state);
* step 2 is the memory step: every tensor allocation and free is recorded (torch.profiler with profile_memory),
  the peak of live tensor bytes is added to what was live before it (weights, optimizer state, the batch):
  "peak" = the tensors a device must hold at once during a steady-state step;
* steps 3.. (--timed-steps, default 1) are timed without recording: the process's CPU time (all threads) and wall
  time, the smallest over those steps. Workers run with OMP_WAIT_POLICY=PASSIVE (unless set), so that idle
  OpenMP threads sleep instead of spinning: the CPU time is then the work done, steadier than the wall time on a
  shared machine. Ratios are against the dense option at the same preset and batch, measured in the same run.

The process's peak resident memory (ru_maxrss) is reported beside it: what this CPU process needed, tensors plus
the Python/torch runtime and the allocator's slack.

Memory safety: before each configuration the bench estimates its peak resident memory (from the same option at a
smaller batch when measured, else from the shapes) and skips it, printing why, when the estimate exceeds
MemAvailable (/proc/meminfo) minus --margin-gib; a running worker also stops itself when MemAvailable falls below
--floor-gib. Skipped configurations are listed at the end with the command that runs them on a quieter machine.

    OMP_NUM_THREADS=2 PYTHONPATH=src python bench/train_memory.py
    OMP_NUM_THREADS=2 PYTHONPATH=src python bench/train_memory.py --presets voc --batches 1 --options dense,lean
    OMP_NUM_THREADS=2 PYTHONPATH=src python bench/train_memory.py --agreement   # bf16 vs float32, lean vs dense
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import otseg.ops.mps as mps_module
from otseg.config import LossFormulation
from otseg.model.build import build_model
from otseg.model.presets import get_preset
from otseg.model.segmentor import OTSeg
from otseg.train.objective import compute_losses, total_loss
from otseg.train.schedule import build_optimizer

GIB = 1 << 30
PRESETS = {"voc": "voc12-inductive", "context": "context59-inductive", "coco": "coco-inductive"}


@dataclass(frozen=True)
class Option:
    """One way of running the step."""

    losses: LossFormulation
    checkpoint_backbone: bool = False
    bf16: bool = False


OPTIONS = {
    "dense": Option("dense"),  # today's formulation: the reference's
    "lean": Option("lean"),
    "lean+ckpt": Option("lean", checkpoint_backbone=True),
    "lean+bf16": Option("lean", bf16=True),
    "lean+ckpt+bf16": Option("lean", checkpoint_backbone=True, bf16=True),
}
# bf16 is left out by default: on a CPU without native bf16 (AVX512-BF16 / AMX) its matrix products are emulated,
# ~25x slower than float32 (measured on a ViT-B/16 step), which says nothing about a GPU.
DEFAULT_OPTIONS = ("dense", "lean", "lean+ckpt")


# ---------------------------------------------------------------------------------------------- the measured step
def build(preset: str, seed: int = 0) -> OTSeg:
    """The preset's model with random weights and random (normalised) class embeddings, in training mode."""
    torch.manual_seed(seed)
    model = build_model(preset)
    cfg = model.config
    model.set_class_embeddings(F.normalize(torch.randn(cfg.num_classes, cfg.num_prompts, cfg.head.embed_dim), dim=-1))
    return model.train()


def batch_for(model: OTSeg, batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and label maps of the preset's crop: 64 px blocks of 8 of its classes per image (seen and
    unseen, as a crop of a real image), and an ignore band (background / padding)."""
    g = torch.Generator().manual_seed(seed)
    size, k = model.config.crop_size, model.config.num_classes
    images = torch.randn(batch, 3, size, size, generator=g)
    blocks = size // 64
    labels = torch.empty(batch, blocks, blocks, dtype=torch.long)
    for i in range(batch):
        classes = torch.randperm(k, generator=g)[:8]
        labels[i] = classes[torch.randint(0, 8, (blocks, blocks), generator=g)]
    labels = labels.repeat_interleave(64, 1).repeat_interleave(64, 2)
    labels[:, : size // 8] = 255
    return images, labels


def make_step(model: OTSeg, images: torch.Tensor, labels: torch.Tensor, option: Option) -> Callable[[], float]:
    """The trainer's step (`Trainer._run`, one micro-batch): autocast, losses, backward, AdamW step."""
    model.backbone.checkpoint_blocks = option.checkpoint_backbone
    optimizer = build_optimizer(model.named_parameters(), 2e-4, 0.01, 1.0)

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=option.bf16):
            losses = compute_losses(
                model,
                images,
                labels,
                num_masks_reducer=lambda count: count.float().clamp(min=1),
                config=model.config,
                losses=option.losses,
            )
            loss = total_loss(losses)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    step.optimizer = optimizer  # type: ignore[attr-defined]
    return step


def live_bytes(tensors: Iterator[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def state_tensors(model: OTSeg, optimizer: torch.optim.Optimizer, *batch: torch.Tensor) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()
    for state in optimizer.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))
    yield from batch


def peak_allocated(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run `fn` recording every CPU tensor allocation and free: (peak of bytes allocated since the start, result)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
    changes = sorted((e.start_ns(), i, e.nbytes()) for i, e in enumerate(events) if e.name() == "[memory]")
    live = peak = 0
    for _, _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak, result


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def start_watchdog(floor_bytes: int) -> None:
    """Stop this process (exit 3) when the machine's available memory falls below `floor_bytes`."""

    def watch() -> None:
        while True:
            if mem_available() < floor_bytes:
                reason = f"stopped: MemAvailable fell below {floor_bytes / GIB:.1f} GiB"
                print(json.dumps({"error": reason}), flush=True)
                os._exit(3)
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process, all threads): on a shared machine the CPU time is the
    steadier measure of the work done."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def worker(preset: str, batch: int, option_name: str, timed_steps: int) -> dict[str, Any]:
    option = OPTIONS[option_name]
    model = build(PRESETS[preset])
    images, labels = batch_for(model, batch)
    step = make_step(model, images, labels, option)
    rss_before = rss_now()
    torch.manual_seed(2)
    first_loss, first_wall, first_cpu = timed(step)
    baseline = live_bytes(state_tensors(model, step.optimizer, images, labels))  # type: ignore[attr-defined]
    step_peak, _ = peak_allocated(step)
    times = [timed(step)[1:] for _ in range(timed_steps)]
    return {
        "preset": preset,
        "batch": batch,
        "option": option_name,
        "peak_bytes": baseline + step_peak,
        "held_bytes": baseline,
        "cpu_seconds": min(cpu for _, cpu in times),
        "wall_seconds": min(wall for wall, _ in times),
        "first_cpu_seconds": first_cpu,
        "first_wall_seconds": first_wall,
        "first_loss": first_loss,
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------- agreement (bf16, lean)
@contextmanager
def sinkhorn_dtypes() -> Iterator[set[tuple[str, str]]]:
    """Record (cost dtype, plan dtype) of every Sinkhorn call made through the MPS / MPSA paths."""
    seen: set[tuple[str, str]] = set()
    original = mps_module.sinkhorn

    def spy(cost: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        plan = original(cost, *args, **kwargs)
        seen.add((str(cost.dtype).removeprefix("torch."), str(plan.dtype).removeprefix("torch.")))
        return plan

    mps_module.sinkhorn = spy  # type: ignore[assignment]
    try:
        yield seen
    finally:
        mps_module.sinkhorn = original  # type: ignore[assignment]


def losses_and_grads(model: OTSeg, images: torch.Tensor, labels: torch.Tensor, option: Option) -> dict[str, Any]:
    model.backbone.checkpoint_blocks = option.checkpoint_backbone
    with sinkhorn_dtypes() as dtypes, torch.autocast("cpu", dtype=torch.bfloat16, enabled=option.bf16):
        losses = compute_losses(model, images, labels, config=model.config, losses=option.losses)
        loss = total_loss(losses)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    return {
        "losses": {k: float(v.detach()) for k, v in losses.items()},
        "grads": dict(zip(names, (g.float() for g in grads), strict=True)),
        "sinkhorn": sorted(dtypes),
    }


def relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> float:
    """||a - b|| / ||b|| over the entries whose name starts with `prefix`."""
    keys = [k for k in b if k.startswith(prefix)]
    diff = sum(float((a[k] - b[k]).square().sum()) for k in keys)
    norm = sum(float(b[k].square().sum()) for k in keys)
    return (diff / norm) ** 0.5 if norm else 0.0


def agreement_worker(preset: str, batch: int) -> dict[str, Any]:
    """float32 lean (the reference point) against bf16 lean and float32 dense, dropout off, same weights and batch."""
    model = build(PRESETS[preset]).eval()  # eval: dropout off, so that only the arithmetic differs
    images, labels = batch_for(model, batch)
    runs = {name: losses_and_grads(model, images, labels, OPTIONS[name]) for name in ("lean", "lean+bf16", "dense")}
    ref = runs["lean"]
    out: dict[str, Any] = {"preset": preset, "batch": batch, "float32_losses": ref["losses"]}
    for name in ("lean+bf16", "dense"):
        run = runs[name]
        out[name] = {
            "sinkhorn_dtypes": run["sinkhorn"],
            "loss_relative": {
                k: abs(v - ref["losses"][k]) / max(abs(ref["losses"][k]), 1e-30) for k, v in run["losses"].items()
            },
            "grad_relative": relative(run["grads"], ref["grads"]),
            "grad_relative_backbone": relative(run["grads"], ref["grads"], "backbone."),
            "grad_relative_head": relative(run["grads"], ref["grads"], "head."),
        }
    out["lean_sinkhorn_dtypes"] = ref["sinkhorn"]
    return out


# ------------------------------------------------------------------------------------------------------- driver
def estimate_rss(preset: str, batch: int, option: Option, measured: list[dict[str, Any]]) -> int:
    """Peak resident memory of a configuration: scaled from the same option's largest measured batch below it,
    else a conservative estimate from the shapes."""
    name = next(n for n, o in OPTIONS.items() if o == option)
    done = [r for r in measured if r["preset"] == preset and r["option"] == name and r["batch"] < batch]
    if done:
        r = max(done, key=lambda r: r["batch"])
        step = r["peak_rss_bytes"] - r["rss_before_bytes"]
        return int(r["rss_before_bytes"] + step * batch / r["batch"])
    cfg = get_preset(PRESETS[preset])
    size, k, tokens = cfg.crop_size, len(cfg.seen_classes), cfg.vision.num_prompt_tokens
    sequence = (size // 16) ** 2 + 1 + tokens
    block = sequence * 768 * 4 * 24  # bytes a ViT-B block saves for backward per image (float32)
    backbone = (12 * sequence * 768 * 4 + 2 * block) if option.checkpoint_backbone else 12 * block
    if option.bf16:
        backbone = backbone * 3 // 4
    losses = 2 * 10 * k * size * size * 4 if option.losses == "dense" else 0
    chunk = 0 if option.losses == "dense" else 30 * (1 << 22) * 4
    return int(2.0 * GIB + chunk + batch * (backbone + losses))


def run_worker(args: list[str], floor_gib: float) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--floor-gib", str(floor_gib), *args]
    env = os.environ.copy()
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (lines[-1] if lines else proc.stderr.strip().splitlines()[-1:] or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f}"


def print_table(results: list[dict[str, Any]]) -> None:
    """Markdown: peaks in GB (1e9 bytes), CPU and wall seconds of the measured step, ratios against dense."""
    head = ["preset", "batch", "option", "peak tensors GB", "peak RSS GB", "CPU s", "wall s", "peak", "CPU time"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in results:
        if "error" in r:
            print(f"| {r['preset']} | {r['batch']} | {r['option']} | {r['error']} |" + " |" * (len(head) - 4))
            continue
        key = (r["preset"], r["batch"], "dense")
        dense = next((d for d in results if (d["preset"], d["batch"], d["option"]) == key and "error" not in d), None)
        peak = f"{dense['peak_bytes'] / r['peak_bytes']:.2f}x lower" if dense else "-"
        speed = f"{dense['cpu_seconds'] / r['cpu_seconds']:.2f}x faster" if dense else "-"
        cells = [r["preset"], r["batch"], r["option"], gb(r["peak_bytes"]), gb(r["peak_rss_bytes"])]
        cells += [f"{r['cpu_seconds']:.1f}", f"{r['wall_seconds']:.1f}", peak, speed]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def parse_list(text: str, valid: Any, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in valid]
    if bad or not items:
        raise SystemExit(f"train_memory.py: {what} {text!r}: use a comma-separated subset of {', '.join(valid)}")
    return items


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="voc,context,coco", help="comma-separated: voc, context, coco")
    p.add_argument("--batches", default="1,2,4", help="per-device batch sizes (default 1,2,4)")
    p.add_argument("--options", default=",".join(DEFAULT_OPTIONS), help=f"of {', '.join(OPTIONS)}")
    p.add_argument("--margin-gib", type=float, default=2.0, help="memory kept free when deciding to run (GiB)")
    p.add_argument("--floor-gib", type=float, default=1.0, help="a worker stops when MemAvailable falls below")
    p.add_argument("--timed-steps", type=int, default=1, help="timed steps (the fastest counts; default 1)")
    p.add_argument("--agreement", action="store_true", help="bf16 vs float32 and lean vs dense, batch 1")
    p.add_argument("--out", help="also write the results as JSON lines to this file")
    p.add_argument("--worker", nargs=3, metavar=("PRESET", "BATCH", "OPTION"), help=argparse.SUPPRESS)
    p.add_argument("--agreement-worker", nargs=2, metavar=("PRESET", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker or args.agreement_worker:
        start_watchdog(int(args.floor_gib * GIB))
        if args.worker:
            preset, batch, option = args.worker
            result = worker(preset, int(batch), option, args.timed_steps)
        else:
            preset, batch = args.agreement_worker
            result = agreement_worker(preset, int(batch))
        print(json.dumps(result), flush=True)
        return

    if args.timed_steps < 1:
        raise SystemExit(f"train_memory.py: --timed-steps {args.timed_steps}: give at least 1")
    presets = parse_list(args.presets, PRESETS, "--presets")
    batches = sorted(int(b) for b in parse_list(args.batches, [str(b) for b in range(1, 65)], "--batches"))
    options = parse_list(args.options, OPTIONS, "--options")
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"torch {torch.__version__}, OMP_NUM_THREADS={threads}, MemAvailable {mem_available() / GIB:.1f} GiB")
    results: list[dict[str, Any]] = []
    skipped: list[tuple[str, int, str]] = []

    def record(result: dict[str, Any]) -> None:
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(result) + "\n")

    if args.agreement:
        for preset in presets:
            need = estimate_rss(preset, 1, OPTIONS["dense"], [])
            if need > mem_available() - args.margin_gib * GIB:
                print(f"skip agreement {preset}: needs about {need / GIB:.1f} GiB, {mem_available() / GIB:.1f} free")
                continue
            record(run_worker(["--agreement-worker", preset, "1"], args.floor_gib) | {"kind": "agreement"})
        return

    for preset in presets:
        for batch in batches:
            for name in options:
                need = estimate_rss(preset, batch, OPTIONS[name], [r for r in results if "error" not in r])
                free = mem_available() - args.margin_gib * GIB
                if need > free:
                    print(
                        f"skip {preset} batch {batch} {name}: estimated peak {need / GIB:.1f} GiB > MemAvailable "
                        f"{mem_available() / GIB:.1f} GiB - margin {args.margin_gib:.1f} GiB",
                        flush=True,
                    )
                    skipped.append((preset, batch, name))
                    continue
                worker_args = ["--worker", preset, str(batch), name, "--timed-steps", str(args.timed_steps)]
                result = run_worker(worker_args, args.floor_gib)
                record({"preset": preset, "batch": batch, "option": name, **result})
    print_table(results)
    for preset, batch in sorted({(p, b) for p, b, _ in skipped}):
        # The ratios need the dense step beside the others, so a skipped configuration is rerun with all options.
        print(
            f"skipped here for lack of memory; on a machine with more free memory run: OMP_NUM_THREADS={threads} "
            f"PYTHONPATH=src python bench/train_memory.py --presets {preset} --batches {batch} --options "
            + ",".join(options)
        )


if __name__ == "__main__":
    main()
