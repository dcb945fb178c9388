"""`otseg export --onnx OUT.onnx`: the whole-crop segmentor for a fixed class set, as an ONNX graph."""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

from otseg.cli.model_options import add_model_arguments

# otseg.export's DEFAULT_OPSET and install hint (a test keeps them equal).
ONNX_OPSET = 18
INSTALL_HINT = "pip install 'otseg[onnx]'  (onnx, onnxscript, onnxruntime)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model for a fixed class set to ONNX (run it with onnxruntime)",
        description=(
            "Export the whole-image test forward (encode_decode) for a fixed class set to ONNX: input 'image' "
            "float32 (B, 3, H, W) normalised with the model's mean/std, output 'scores' (B, K, H, W). H, W are "
            "fixed (default: the crop size); larger images go through otseg.export.onnx_slide_inference. "
            "Sinkhorn runs a fixed number of iterations (no stopping check in a graph). Class names and "
            "preprocessing are stored in the file's metadata and in OUT.onnx.json. Needs: " + INSTALL_HINT
        ),
    )
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    add_model_arguments(p, progress=False)
    p.add_argument("--classes", help="comma-separated class names to export instead of the model's own (text tower)")
    p.add_argument(
        "--sinkhorn-iters",
        type=int,
        metavar="N",
        help="Sinkhorn iterations per call in the graph (default: the config's max_iter, the reference's cap)",
    )
    p.add_argument("--image-size", metavar="N|HxW", help="fixed input size (default: the model's crop size)")
    p.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    p.add_argument("--check", action="store_true", help="compare onnxruntime with PyTorch on random images")
    p.add_argument(
        "--check-tol",
        type=float,
        default=1e-3,
        help="--check fails (exit 1) above this max |diff| vs PyTorch with the same Sinkhorn (default 1e-3)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Export a model to ONNX (and optionally check it with onnxruntime)."""
    from otseg.cli.model_options import predictor_from_args
    from otseg.data.classes import parse_class_option
    from otseg.errors import BadValueError
    from otseg.export import (
        PROGRESS_EVERY_S,
        StageClock,
        compare_with_onnxruntime,
        export_onnx,
        onnx_metadata,
        require_module,
    )

    out = Path(args.onnx)
    if out.is_dir():
        raise BadValueError(f"--onnx {out} is a folder; give the file to write, e.g. {out / 'otseg.onnx'}")
    if args.sinkhorn_iters is not None and args.sinkhorn_iters < 1:
        raise BadValueError(f"--sinkhorn-iters must be >= 1, got {args.sinkhorn_iters}")
    image_size = _parse_image_size(args.image_size) if args.image_size else None
    classes = parse_class_option(args.classes, "--classes") if args.classes else None
    require_module("onnxscript", "otseg export --onnx")
    if args.check:
        require_module("onnxruntime", "otseg export --check")

    start = time.perf_counter()
    print("loading the model ...", end=" ", flush=True)
    model = predictor_from_args(args).model
    if classes is not None:
        if model.text_encoder is None:
            raise BadValueError(
                "--classes needs the model's CLIP text tower to embed the names, and this model has none: "
                "add --clip ViT-B-16.pt, or leave out --classes to export the model's own classes"
            )
        model.set_classes(classes)
    if not model.has_class_embeddings:
        raise BadValueError(
            "the model has no class text embeddings: pass --classes 'a,b,c' (with --clip if it has no text tower)"
        )
    print(f"{time.perf_counter() - start:.1f} s", flush=True)
    iters = args.sinkhorn_iters if args.sinkhorn_iters is not None else model.config.head.sinkhorn_max_iter
    start = time.perf_counter()
    print(
        f"exporting to ONNX ({iters} Sinkhorn iterations per call) in stages; each says when it starts and ends, "
        f"and every {PROGRESS_EVERY_S:.0f} s while it runs",
        flush=True,
    )
    report = functools.partial(print, flush=True)
    path = export_onnx(model, out, image_size=image_size, sinkhorn_iters=iters, opset=args.opset, progress=report)
    print(f"exporting to ONNX: {time.perf_counter() - start:.1f} s", flush=True)
    meta = onnx_metadata(path)
    h, w = meta["input_size"]
    size_mb = path.stat().st_size / 2**20
    print(
        f"wrote {path} ({size_mb:.1f} MiB) and {path.name}.json: image (B, 3, {h}, {w}) -> scores "
        f"(B, {len(meta['class_names'])}, {h}, {w}); {iters} Sinkhorn iterations per call; opset {meta['opset']}"
    )
    print(f"classes: {', '.join(meta['class_names'])}")
    if not args.check:
        return 0
    start = time.perf_counter()
    print("checking with onnxruntime (2 random images, onnxruntime and PyTorch) ...", flush=True)
    with StageClock(report) as clock:
        clock.start("running both")
        result = compare_with_onnxruntime(model, path)
        clock.end()
    print(f"checking with onnxruntime ... {time.perf_counter() - start:.1f} s", flush=True)
    print(
        f"check (onnxruntime vs PyTorch, 2 random images): max |diff| {result['max_abs_diff']:.3g} with the same "
        f"{iters}-iteration Sinkhorn, argmax agreement {100 * result['argmax_agreement']:.2f}%; "
        f"vs PyTorch's default (reference stopping rule): max |diff| {result['max_abs_diff_default']:.3g}, "
        f"argmax agreement {100 * result['argmax_agreement_default']:.2f}%"
    )
    if result["max_abs_diff"] > args.check_tol:
        print(f"check FAILED: onnxruntime differs from PyTorch by more than --check-tol {args.check_tol:g}")
        return 1
    return 0


def _parse_image_size(text: str) -> tuple[int, int]:
    from otseg.errors import BadValueError

    parts = text.lower().replace("x", ",").split(",")
    try:
        size = [int(p) for p in parts]
    except ValueError:
        size = []
    if len(size) == 1:
        size *= 2
    if len(size) != 2:
        raise BadValueError(f"--image-size expects N or HxW (e.g. 512 or 512x640), got {text!r}")
    return size[0], size[1]
