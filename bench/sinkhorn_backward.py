"""Implicit against unrolled Sinkhorn backward in one training step (not a test): gradient difference, time, memory.

The reference backpropagates through every iteration of its Sinkhorn loop; otseg's default differentiates the
returned plan implicitly (`otseg.ops.sinkhorn`). This script measures, in one run, what the choice changes in a
training step of the COCO-Stuff inductive shape (156 seen classes, 8 prompts, 100 VPT tokens, 512 crop, per-device
batch 1 by default): the full ViT-B/16 architecture with random weights (or `--clip ViT-B-16.pt`), the regular
objective (`otseg.train.objective.compute_losses`), AdamW. Dropout is off in every measurement, so that the two
variants differ only in their backward. The unrolled variant is `SinkhornOptions(backward="unrolled")` passed to the
forward, which also selects the literal reference loop for the forward (otseg's default forward uses the scaling
update: the plans agree to float rounding).

Printed:

* gradient difference, end to end: ||g_implicit - g_unrolled|| / ||g_unrolled|| over all trainable parameters,
  per parameter group (head, VPT prompts) and the largest per-parameter value; the losses of both; the Sinkhorn
  iteration counts of the step's calls (random weights converge in few iterations; trained weights need more, up to
  the cap of 100, where the unrolled backward's memory grows with the count);
* time of one step (forward, backward, optimizer step): median over `--repeats` steps after one warm-up step, CPU
  time of the process by default (`--clock cpu`: other processes' load on a shared machine does not inflate it);
* memory: the bytes the step saves for backward (the unique storages packed by autograd, parameters excluded:
  exact, independent of the allocator), and the peak resident-set increase of a fresh process during one step
  after a warm-up step (allocations >= 64 KiB mapped individually so that freed memory leaves the resident set, as
  bench/sinkhorn_bench.py does). On a GPU the saved tensors are the same; the peak there adds the caching
  allocator's reserve and kernel workspaces, and lacks the CPU's temporary copies.

Each variant runs in its own subprocess (`--child`), so one cannot inherit the other's memory.

Usage:
    python bench/sinkhorn_backward.py --part head            # the decode head alone (peak 3.6 GB measured)
    python bench/sinkhorn_backward.py --part head --at-cap   # ... every call at 100 iterations (peak 7.6 GB)
    python bench/sinkhorn_backward.py                        # the full model (more: the backbone's activations)
Options: --batch N, --threads N (default 1), --repeats N (default 2), --clock cpu|wall, --clip FILE, --seed N,
--at-cap (no early stop: `SinkhornOptions(thresh=0.0)` in both variants, the worst case of trained weights, whose
calls may run to the cap; random weights stop after about 4 iterations). On the shared 2-core machine each head run
took about 27 minutes of wall time (docs/sinkhorn-backward.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F

import otseg
from otseg.config import apply_overrides
from otseg.model.build import load_clip_into
from otseg.model.head import OTSegHead
from otseg.model.presets import get_preset
from otseg.ops.sinkhorn import record_sinkhorn_calls
from otseg.ops.sinkhorn_options import SinkhornOptions
from otseg.train.objective import compute_losses, total_loss, training_losses
from otseg.train.schedule import build_optimizer

PRESET = "coco-inductive"  # 171 classes, 156 seen; templates_8; 100 VPT tokens; 512 crop
NO_DROPOUT: dict[str, Any] = {"head.dropout": 0.0, "head.attn_dropout": 0.0, "vision.prompt_dropout": 0.0}
VARIANTS = ("implicit", "unrolled")


# ------------------------------------------------------------------------------------------------ the child side
def _rss_mb(field: str) -> float:
    """VmRSS (current) or VmHWM (peak) of this process in MB, from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise OSError("/proc/self/status has no " + field)


def _reset_peak() -> float:
    """Reset the peak resident size to the current one (Linux clear_refs 5); return the current size in MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _rss_mb("VmRSS")


def _setup(spec: dict[str, Any]) -> dict[str, Any]:
    """Model, optimizer and one batch, all seeded: identical in every child."""

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    model = otseg.build_model(apply_overrides(get_preset(PRESET), NO_DROPOUT))
    if spec.get("clip"):
        load_clip_into(model, spec["clip"])
    cfg = model.config
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    k, n, d = cfg.num_classes, cfg.num_prompts, cfg.head.embed_dim
    model.set_class_embeddings(F.normalize(torch.randn(k, n, d, generator=g), dim=-1))
    size, b = cfg.vision.image_size, spec["batch"]
    images = torch.randn(b, 3, size, size, generator=g)
    # Labels: 10 rectangles of random classes (seen and unseen) on an ignored background, per image.
    labels = torch.full((b, size, size), 255, dtype=torch.long)
    for i in range(b):
        for _ in range(10):
            y, x = torch.randint(0, size - 64, (2,), generator=g).tolist()
            h, w = torch.randint(64, size // 2, (2,), generator=g).tolist()
            labels[i, y : y + h, x : x + w] = int(torch.randint(0, k, (1,), generator=g))
    model.train()
    optimizer = build_optimizer(model.named_parameters(), 2e-4, 0.01)
    return {"model": model, "optimizer": optimizer, "images": images, "labels": labels}


def _head_setup(spec: dict[str, Any]) -> dict[str, Any]:
    """The decode head alone at the preset's shape, fed random unit-norm patch / global embeddings."""

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    cfg = apply_overrides(get_preset(PRESET), NO_DROPOUT)
    head = OTSegHead(cfg.head).train()
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    seen = len(cfg.seen_classes)
    d, grid, b = cfg.head.embed_dim, cfg.vision.image_size // cfg.vision.patch_size, spec["batch"]
    inputs = (
        F.normalize(torch.randn(b, d, grid, grid, generator=g), dim=1),
        F.normalize(torch.randn(b, d, generator=g), dim=-1),
        F.normalize(torch.randn(seen, cfg.num_prompts, d, generator=g), dim=-1),
    )
    size = cfg.head.output_size
    labels = torch.full((b, size, size), 255, dtype=torch.long)
    for i in range(b):
        for _ in range(10):
            y, x = torch.randint(0, size - 64, (2,), generator=g).tolist()
            h, w = torch.randint(64, size // 2, (2,), generator=g).tolist()
            labels[i, y : y + h, x : x + w] = int(torch.randint(0, seen, (1,), generator=g))
    optimizer = build_optimizer(head.parameters(), 2e-4, 0.01)
    return {"model": head, "optimizer": optimizer, "inputs": inputs, "labels": labels}


def _loss(state: dict[str, Any], part: str, options: SinkhornOptions):

    if part == "full":
        return total_loss(compute_losses(state["model"], state["images"], state["labels"], sinkhorn_options=options))
    out = state["model"](*state["inputs"], sinkhorn_options=options)
    return total_loss(training_losses(out, state["labels"]))


def _options(spec: dict[str, Any], backward: str) -> SinkhornOptions:
    """The Sinkhorn options of a variant, given to every forward: its backward, and with --at-cap no early stop
    (every call runs all 100 iterations, as calls of trained models that never reach the threshold do)."""
    return SinkhornOptions(backward="unrolled" if backward == "unrolled" else "implicit",
                           thresh=0.0 if spec["at_cap"] else None)  # fmt: skip


def _step(state: dict[str, Any], part: str, options: SinkhornOptions, saved: dict[int, int] | None = None) -> float:
    """One training step (forward, backward, AdamW) with the given Sinkhorn backward; returns the loss. With `saved`,
    the storages autograd packs for backward (parameters excluded) are recorded there, pointer -> bytes."""

    params = {p.untyped_storage().data_ptr() for p in state["model"].parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if saved is not None:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _loss(state, part, options)
        loss.backward()
    state["optimizer"].step()
    state["optimizer"].zero_grad(set_to_none=True)
    return float(loss.detach())


def child(spec: dict[str, Any]) -> dict[str, Any]:

    part = spec["part"]
    state = (_setup if part == "full" else _head_setup)(spec)
    if spec["measure"] == "gradient":
        grads, losses, iterations = {}, {}, {}
        for backward in VARIANTS:
            state["model"].zero_grad(set_to_none=True)
            with record_sinkhorn_calls() as calls:
                loss = _loss(state, part, _options(spec, backward))
                loss.backward()
            losses[backward] = float(loss.detach())
            iterations[backward] = [c.iterations for c in calls]
            grads[backward] = {
                n: p.grad.detach().clone() for n, p in state["model"].named_parameters() if p.grad is not None
            }
        gi, gu = grads["implicit"], grads["unrolled"]
        if set(gi) != set(gu):
            raise RuntimeError(f"the two variants reach different parameters: {sorted(set(gi) ^ set(gu))}")

        def rel(names: list[str]) -> float:
            num = sum(float((gi[n] - gu[n]).double().pow(2).sum()) for n in names)
            den = sum(float(gu[n].double().pow(2).sum()) for n in names)
            return (num / den) ** 0.5 if den else float("nan")

        names = sorted(gu)
        per = {n: rel([n]) for n in names if float(gu[n].abs().max()) > 0}
        worst = max(per, key=lambda n: per[n])
        return {
            "losses": losses,
            "iterations": iterations,
            "all": rel(names),
            "head": rel([n for n in names if not n.startswith("backbone.")]),
            "prompts": rel([n for n in names if n.startswith("backbone.")]),
            "worst": [worst, per[worst]],
            "median_param": statistics.median(per.values()),
            "num_params": len(names),
        }
    options = _options(spec, spec["backward"])
    _step(state, part, options)  # warm-up: kernels, AdamW state
    if spec["measure"] == "memory":
        saved: dict[int, int] = {}
        base = _reset_peak()
        _step(state, part, options, saved)
        return {"peak_mb": _rss_mb("VmHWM") - base, "saved_mb": sum(saved.values()) / 2**20}
    clock = time.process_time if spec["clock"] == "cpu" else time.perf_counter
    times = []
    for _ in range(spec["repeats"]):
        t0 = clock()
        _step(state, part, options)
        times.append(clock() - t0)
    return {"time": statistics.median(times), "times": times}


# ------------------------------------------------------------------------------------------------ the parent side
def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MALLOC_MMAP_THRESHOLD_": "65536"}
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps({**spec, "out": out.name})],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            return {"error": tail[0]}
        return json.loads(out.read())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["full", "head"], default="full", help="the whole model or the head alone")
    parser.add_argument("--batch", type=int, default=1, help="images per step (default 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per variant after a warm-up step")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--clip", help="OpenAI CLIP weights instead of random ones (ViT-B-16.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--at-cap", action="store_true", help="no early stop: every Sinkhorn call runs its 100 iterations (thresh 0)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        result = child(spec)
        with open(spec["out"], "w") as f:
            json.dump(result, f)
        return 0

    base = {"part": args.part, "batch": args.batch, "threads": args.threads, "repeats": args.repeats,
            "clock": args.clock, "clip": args.clip, "seed": args.seed, "at_cap": args.at_cap}  # fmt: skip
    what = "full model (ViT-B/16 + VPT + head)" if args.part == "full" else "decode head alone"
    weights = f"CLIP weights {args.clip}" if args.clip else "random weights"
    if args.at_cap:
        weights += ", every Sinkhorn call at its 100-iteration cap"
    print(f"# Sinkhorn backward, implicit vs unrolled: {PRESET} shape, {what}, batch {args.batch}, {weights}, "
          f"dropout off, {args.threads} thread(s), clock {args.clock}\n")  # fmt: skip

    grad = run_child({**base, "measure": "gradient"})
    if "error" in grad:
        print(f"gradient comparison failed: {grad['error']}")
        return 1
    print("## Gradient difference, end to end (one step, same weights and batch)\n")
    print(f"- loss: implicit {grad['losses']['implicit']:.6f}, unrolled {grad['losses']['unrolled']:.6f}")
    for key in VARIANTS:
        its = grad["iterations"][key]
        print(f"- Sinkhorn iterations per call ({key}): {its}")
    print(f"- relative gradient difference ||g_implicit - g_unrolled|| / ||g_unrolled||: all trainable "
          f"{grad['all']:.2e}, head {grad['head']:.2e}, VPT prompts {grad['prompts']:.2e}")  # fmt: skip
    print(f"- per parameter ({grad['num_params']}): median {grad['median_param']:.2e}, largest "
          f"{grad['worst'][1]:.2e} ({grad['worst'][0]})\n")  # fmt: skip

    rows = {}
    for backward in VARIANTS:
        timing = run_child({**base, "measure": "time", "backward": backward})
        memory = run_child({**base, "measure": "memory", "backward": backward})
        rows[backward] = (timing, memory)
    print("## One training step (forward, backward, AdamW)\n")
    print("| backward | step time (s) | saved for backward (MB) | peak RSS increase (MB) |")
    print("|---|---:|---:|---:|")
    for backward, (timing, memory) in rows.items():
        t = timing.get("error") or f"{timing['time']:.2f}"
        saved = memory.get("error") or f"{memory['saved_mb']:,.0f}"
        peak = memory.get("error") or f"{memory['peak_mb']:,.0f}"
        print(f"| {backward} | {t} | {saved} | {peak} |")
    (ti, mi), (tu, mu) = rows["implicit"], rows["unrolled"]
    if not any("error" in r for r in (ti, mi, tu, mu)):
        print(
            f"\nunrolled / implicit: time {tu['time'] / ti['time']:.2f}x, saved for backward "
            f"{mu['saved_mb'] / mi['saved_mb']:.2f}x, peak {mu['peak_mb'] / mi['peak_mb']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
