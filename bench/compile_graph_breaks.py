"""Graph breaks of the segmentor under torch.compile, counted by `torch._dynamo.explain`, with their reasons.

Traces, on a model built from a preset with random weights:

* `encode_decode` (one crop's test-time scores: backbone, head, upsampling), eval mode, no grad;
* the training forward (`model(images)`: backbone, head on the training text), train mode, with gradients.

Each twice in one run: with the Sinkhorn's in-graph stopping loop (what `torch.compile` gets), and with the eager
driver forced under tracing, i.e. the stopping rule read on the host (`.tolist()`) as the previous version did
everywhere. Prints the number of graphs and of graph breaks, and each distinct reason with where it happens.

Usage:
    python bench/compile_graph_breaks.py                    # voc12-inductive at 512x512 (about a minute on a CPU)
    python bench/compile_graph_breaks.py --image-size 224   # faster
Options: --preset, --image-size, --threads (default 1).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from otseg.model.build import build_model
from otseg.ops import sinkhorn_loop


@contextlib.contextmanager
def eager_stopping_rule() -> Iterator[None]:
    """Make the Sinkhorn believe it is not being traced, so it runs its eager driver (host reads) under tracing."""
    original = sinkhorn_loop.is_compiling
    sinkhorn_loop.is_compiling = lambda: False  # type: ignore[assignment]
    try:
        yield
    finally:
        sinkhorn_loop.is_compiling = original  # type: ignore[assignment]


def explain(fn: Callable[..., Any], *args: Any) -> tuple[int, int, Counter[str]]:
    """(graphs, graph breaks, Counter of 'reason @ file:line') of tracing fn(*args)."""
    torch._dynamo.reset()
    result = torch._dynamo.explain(fn)(*args)
    reasons: Counter[str] = Counter()
    for brk in result.break_reasons:
        frame = brk.user_stack[-1] if brk.user_stack else None
        where = f"{frame.filename.rsplit('/src/', 1)[-1]}:{frame.lineno}" if frame else "?"
        reasons[f"{brk.reason.strip().splitlines()[0]} @ {where}"] += 1
    return result.graph_count, result.graph_break_count, reasons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="voc12-inductive")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.image_size < 32 or args.image_size % 16 or args.threads < 1:
        print("compile_graph_breaks.py: --image-size must be a multiple of 16, >= 32; --threads >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch._logging.set_logs(dynamo=logging.ERROR)  # the breaks are listed below, not as warnings
    torch.manual_seed(0)
    model = build_model(args.preset)
    cfg = model.config
    k, n, d = cfg.num_classes, cfg.num_prompts, cfg.head.embed_dim
    model.set_class_embeddings(F.normalize(torch.randn(k, n, d, generator=torch.Generator().manual_seed(0)), dim=-1))
    image = torch.randn(1, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(1))

    def encode_decode(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.encode_decode(images)

    def training_forward(images: torch.Tensor) -> torch.Tensor:
        out = model(images)
        return out.decoder_logits + (out.mps_logits if out.mps_logits is not None else 0.0)

    print(f"# Graph breaks under torch.compile: {args.preset}, {args.image_size}x{args.image_size}, torch "
          f"{torch.__version__} (torch._dynamo.explain)\n")  # fmt: skip
    for title, fn, train in (("encode_decode (eval, no grad)", encode_decode, False),
                             ("training forward (train, with grad)", training_forward, True)):  # fmt: skip
        model.train(train)
        for label, context in (("eager stopping rule (host read)", eager_stopping_rule),
                               ("in-graph stopping rule", contextlib.nullcontext)):  # fmt: skip
            with context():
                graphs, breaks, reasons = explain(fn, image)
            print(f"{title}, {label}: {graphs} graph(s), {breaks} graph break(s)")
            for reason, count in reasons.most_common():
                print(f"    {count} x {reason}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
