"""`otseg bench`: the paper's efficiency table (parameters, GFLOPs, images per second) on this device."""

from __future__ import annotations

import argparse
import json

from otseg.config import PRECISIONS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="the paper's efficiency table (params, GFLOPs, images/s) for baseline, OTSeg, OTSeg+",
        description=(
            "Parameters, GFLOPs (mmcv-style as in the paper, and a full count) and images per second of the "
            "ZegCLIP-style baseline, OTSeg and OTSeg+ at 512x512 on this device, with random weights."
        ),
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if any)")
    p.add_argument("--image-size", type=int, default=512, help="side of the square test image (default: 512)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3 on CPU, 20 on GPU)")
    p.add_argument("--warmup", type=int, default=None, help="discarded rounds (default 1 on CPU, 3 on GPU)")
    p.add_argument("--preset", default="voc12-inductive", help="the preset timed (default: voc12-inductive)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-capped", action="store_true", help="skip the timing at 100 Sinkhorn iterations per call")
    p.add_argument(
        "--precision",
        nargs="+",
        choices=PRECISIONS,
        help="precisions whose images per second are timed (float32 always is: the table's); default: float32 and "
        "bf16 where the device has bfloat16 units, float32 alone elsewhere",
    )
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the efficiency table."""
    import torch

    from otseg.benchmark import efficiency_table, format_precision_table, format_table
    from otseg.model.precision import precision_note

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    repeats = args.repeats if args.repeats is not None else (20 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    precisions = args.precision
    if precisions is None:
        note = precision_note("bf16", torch.device(device))
        precisions = ["float32"] if note else ["float32", "bf16"]
        if note:
            print(f"otseg bench: bf16 not timed ({note.removeprefix('precision bf16: ')}); --precision bf16 times it")
    rows = efficiency_table(
        device,
        image_size=args.image_size,
        repeats=repeats,
        warmup=warmup,
        preset=args.preset,
        capped=not args.no_capped,
        precisions=precisions,
    )
    print(format_table(rows))
    if len(rows[0]["images_per_second_by_precision"]) > 1:
        print()
        print(format_precision_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return 0
