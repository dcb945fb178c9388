"""`otseg serve`: the web page (Gradio) that segments an uploaded image with typed class names."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import TYPE_CHECKING

from otseg.cli.model_options import add_model_arguments

if TYPE_CHECKING:
    from otseg.predictor import Predictor

# The page's limits (otseg.web's defaults, which a test keeps equal to these).
DEFAULT_MAX_CLASSES = 64
DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_MAX_PIXELS = 16_000_000
DEFAULT_MAX_CACHE_MB = 200
INSTALL_HINT = "pip install 'otseg[web]'"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="a web page: upload an image, type class names, see the segmentation (needs otseg[web])",
        description="Serve a web demo (Gradio): upload an image, type comma-separated class names, press Segment "
        "and see the label map over the image with a legend and the share of each class. Needs the web extra: "
        f"{INSTALL_HINT}. Local only unless --host or --share say otherwise.",
    )
    add_model_arguments(p, progress=False, precision=True)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all interfaces)"
    )
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    p.add_argument(
        "--share", action="store_true", help="also make a temporary public link through gradio.live (off by default)"
    )
    p.add_argument(
        "--max-classes",
        type=int,
        default=DEFAULT_MAX_CLASSES,
        help=f"most class names one request may give (default: {DEFAULT_MAX_CLASSES})",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest upload accepted, in megabytes (default: {DEFAULT_MAX_UPLOAD_MB})",
    )
    p.add_argument(
        "--max-cache-mb",
        type=float,
        default=DEFAULT_MAX_CACHE_MB,
        help=f"most megabytes of uploads and results kept on the server's disk; the oldest go first (default: "
        f"{DEFAULT_MAX_CACHE_MB})",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest image accepted, in pixels, checked before decoding (default: {DEFAULT_MAX_PIXELS:,})",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load the model, build the page and serve it until Ctrl+C."""
    from otseg.cli.model_options import predictor_from_args
    from otseg.errors import BadValueError
    from otseg.web import import_gradio

    import_gradio()  # fail fast, before a model is loaded (loading one takes seconds to minutes)
    if not 0 < args.port < 65536:
        raise BadValueError(f"--port must be between 1 and 65535, got {args.port}")
    for name in ("max_classes", "max_upload_mb", "max_pixels", "max_cache_mb"):
        if getattr(args, name) <= 0:
            raise BadValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.max_cache_mb < args.max_upload_mb:
        raise BadValueError(
            f"--max-cache-mb {args.max_cache_mb:g} is smaller than --max-upload-mb {args.max_upload_mb:g}: the "
            "cache must hold at least one upload"
        )
    predictor = predictor_from_args(args)
    private_cache = None
    if not os.environ.get("GRADIO_TEMP_DIR"):
        # A cache folder of this server's own (mode 0700): the cap and the sweeps never touch other servers' files.
        private_cache = tempfile.mkdtemp(prefix="otseg-serve-")
        os.environ["GRADIO_TEMP_DIR"] = private_cache
    try:
        return _serve(args, predictor)
    finally:
        if private_cache is not None:
            shutil.rmtree(private_cache, ignore_errors=True)
            os.environ.pop("GRADIO_TEMP_DIR", None)


def _serve(args: argparse.Namespace, predictor: Predictor) -> int:
    from otseg.web import build_app, launch

    app = build_app(predictor, max_classes=args.max_classes, max_pixels=args.max_pixels)
    _, local_url, share_url = launch(
        app,
        host=args.host,
        port=args.port,
        share=args.share,
        prevent_thread_lock=True,
        quiet=True,
        max_upload_mb=args.max_upload_mb,
        max_cache_mb=args.max_cache_mb,
    )
    print(f"serving {predictor!r} at {local_url}" + (f" and {share_url}" if share_url else ""))
    print("press Ctrl+C to stop", flush=True)
    # Not gradio's block_thread(), which closes only the HTTP server: close() also stops the queue and the
    # static-file workers.
    try:
        while app.is_running:
            time.sleep(0.1)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        app.close(verbose=False)
    return 0
