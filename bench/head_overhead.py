"""OTSeg+'s decode-head overhead over the ZegCLIP-style baseline, at the Sinkhorn counts reached and at the cap.

Builds the three variants of `otseg bench` (the ZegCLIP-style baseline: softmax attention, one prompt, no MPS path;
OTSeg: the MPSA decoder; OTSeg+: decoder + MPS path) from one preset with random weights and one shared backbone,
computes the backbone features of one image once, and times the heads alone on them, interleaved round-robin
(medians; this process's CPU time on the CPU, which other processes' load does not inflate). Twice: with the
iteration counts the random weights reach (a few per call), and with every Sinkhorn call run to the reference's
100-iteration cap (`CAPPED`, the calls' options `InferenceOptions(sinkhorn=SinkhornOptions(thresh=0.0))`: the
default loop, stop checks included, with a threshold it never meets), an upper bound for trained weights. It also
times the baseline's whole image (`predict_scores`).

Printed per variant: head time, head time over the baseline's, and the head overhead as `otseg bench` and
docs/speed.md define it: (head - baseline head) / the baseline's time per image (the backbones are identical, so
the heads' difference is the whole difference). The target for OTSeg+ at the cap is <= 3 %.

Usage:
    python bench/head_overhead.py                 # voc12-inductive, 512x512, 1 thread (about 2 minutes on a CPU)
    python bench/head_overhead.py --compile       # also the heads under torch.compile (the in-graph loop)
Options: --preset, --image-size, --rounds (head rounds, default 30), --image-rounds (default 3), --threads (default
1), --device.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from otseg.model.build import build_model
from otseg.model.inference_options import InferenceOptions
from otseg.model.segmentor import OTSeg
from otseg.ops import SinkhornOptions, record_sinkhorn_calls

BASELINE = "ZegCLIP-style baseline"
# Every Sinkhorn call at the cap: the default loop, stop checks included, with a threshold it never meets.
CAPPED = InferenceOptions(sinkhorn=SinkhornOptions(thresh=0.0))
VARIANTS: dict[str, dict[str, Any]] = {  # the same variants as `otseg bench` (otseg.benchmark.MODEL_VARIANTS)
    BASELINE: {
        "head__attention": "softmax",
        "head__use_mps": False,
        "head__map_combination": "last",
        "templates": "templates_1",
    },
    "OTSeg": {"head__use_mps": False},
    "OTSeg+": {},
}


def build(preset: str, overrides: dict[str, Any], device: torch.device) -> OTSeg:
    """A variant with seeded random weights and random unit class embeddings."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(preset, **overrides).eval().to(device)
    k, n, d = model.config.num_classes, model.config.num_prompts, model.config.head.embed_dim
    g = torch.Generator().manual_seed(0)
    model.set_class_embeddings(F.normalize(torch.randn(k, n, d, generator=g), dim=-1))
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], Any]], device: torch.device, rounds: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds per call of each function in each round, run round-robin with a rotating order (warmup rounds
    dropped); the process's CPU time on the CPU, the wall clock elsewhere."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(warmup + rounds):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            sync(device)
            t0 = clock()
            fns[name]()
            sync(device)
            if r >= warmup:
                times[name].append(clock() - t0)
    return times


def sinkhorn_counts(heads: dict[str, Callable[[], Any]]) -> dict[str, str]:
    """'calls x mean iterations' of one call of each head ('-' without Sinkhorn calls)."""
    counts = {}
    for name, fn in heads.items():
        with record_sinkhorn_calls() as calls:
            fn()
        counts[name] = f"{len(calls)} x {statistics.mean(c.iterations for c in calls):.0f}" if calls else "-"
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="voc12-inductive")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds of the heads (default 30)")
    parser.add_argument("--image-rounds", type=int, default=3, help="timed rounds of the baseline's whole image")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time the heads compiled with torch.compile")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.image_rounds < 1 or args.image_size < 32 or args.threads < 1:
        print("head_overhead.py: --rounds, --image-rounds, --threads must be >= 1; --image-size >= 32", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models = {name: build(args.preset, overrides, device) for name, overrides in VARIANTS.items()}
    backbone_state = models[BASELINE].backbone.state_dict()
    for model in models.values():  # identical backbones: the variants differ only in their heads
        model.backbone.load_state_dict(backbone_state)
    image = torch.randn(1, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(1))
    image = image.to(device)
    with torch.no_grad():
        patch_emb, global_emb = models[BASELINE].backbone(image)

    def head(
        model: OTSeg, forward: Callable[..., Any] | None = None, options: InferenceOptions | None = None
    ) -> Callable[[], Any]:
        seen = model.seen_mask if model.config.apply_seen_bias else None
        run = forward or model.head.predict

        def call() -> Any:
            with torch.no_grad():
                return run(patch_emb, global_emb, model.class_embeddings, seen, options)

        return call

    heads = {name: head(model) for name, model in models.items()}
    with torch.no_grad():
        image_times = time_interleaved({BASELINE: lambda: models[BASELINE].predict_scores(image)}, device,
                                       args.image_rounds, warmup=1)  # fmt: skip
    image_s = statistics.median(image_times[BASELINE])
    measured = {"counts reached": time_interleaved(heads, device, args.rounds)}
    counts = {"counts reached": sinkhorn_counts(heads)}
    capped = {name: head(model, options=CAPPED) for name, model in models.items()}
    measured["at the cap"] = time_interleaved(capped, device, args.rounds)
    counts["at the cap"] = sinkhorn_counts(capped)
    if args.compile:
        compiled = {n: head(m, torch.compile(m.head.predict), CAPPED) for n, m in models.items()}
        for fn in compiled.values():  # compile outside the timed rounds
            fn()
        measured["compiled, at the cap"] = time_interleaved(compiled, device, args.rounds)
        counts["compiled, at the cap"] = {n: "(in the graph)" for n in compiled}

    where = f"CPU, {args.threads} thread(s)" if device.type == "cpu" else torch.cuda.get_device_name(device)
    clock = "process CPU time" if device.type == "cpu" else "wall clock"
    print(f"# Decode-head overhead: {args.preset}, {args.image_size}x{args.image_size}, random weights, {where}")
    print(f"torch {torch.__version__}; medians of {args.rounds} interleaved rounds ({clock}); the baseline's whole")
    print(f"image (backbone + head, {args.image_rounds} rounds): {image_s * 1e3:.0f} ms\n")
    print("head ms: median over rounds; head - baseline: median over rounds of the difference within a round")
    print("(paired: load that slows a whole round cancels); overhead = that difference / the baseline's image time\n")
    print("| Sinkhorn | model | calls x iterations | head ms | head / baseline head | head - baseline | overhead |")
    print("|---|---|---|---:|---:|---:|---:|")
    overheads: dict[str, dict[str, float]] = {}
    for label, times in measured.items():
        base = statistics.median(times[BASELINE])
        for name, t in times.items():
            head_s = statistics.median(t)
            diff = statistics.median(a - b for a, b in zip(t, times[BASELINE], strict=True))
            overheads.setdefault(label, {})[name] = diff / image_s
            cells = [label, name, counts[label][name], f"{head_s * 1e3:.1f}", f"{head_s / base:.2f}x"]
            cells += [f"{diff * 1e3:+.1f} ms", f"{diff / image_s * 100:+.1f} %"]
            print("| " + " | ".join(cells) + " |")
    plus = overheads["at the cap"]["OTSeg+"]
    print(f"\nOTSeg+ at the cap: head overhead {plus * 100:+.1f} % of the baseline's time per image (target <= 3 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
