"""`otseg serve`: a web page to segment an uploaded image with typed class names (Gradio, an optional extra).

    $ pip install 'otseg[web]'
    $ otseg serve                                  # the demo model, at http://127.0.0.1:7860
    $ otseg serve --checkpoint runs/voc/iter_20000.pt --clip ViT-B-16.pt --port 8080

From Python, `build_app(predictor)` returns the `gradio.Blocks` page without starting a server, and
`launch(app, ...)` serves it:

    >>> from otseg import Predictor
    >>> from otseg.web import build_app, launch
    >>> app = build_app(Predictor.from_pretrained("demo"))
    >>> launch(app, port=7861)

The page: an image upload, a text box of comma-separated class names (prefilled with the model's own classes) and
a "Segment" button; it shows the label map blended over the image with a legend, and the share of the image's
pixels given to each class. Bad input (no image, an empty or repeated class name, a file that is not an image)
shows a message in the page. Gradio is imported only when the page is built, so the rest of otseg never needs
it; analytics are switched off (no calls to gradio's servers), and no public share link is made unless asked.

Limits, so that no visitor can hurt the server: uploads larger than `--max-upload-mb` (default 20 MB) are
refused by gradio, images over `--max-pixels` (default 16 million) are refused from their header before
decoding, at most `--max-classes` names (default 64) are taken per request, and one request runs at a time. An
uploaded file is deleted from the server as soon as it has been read (the decoded picture stays in memory for a
few further requests with other class names), and gradio's cache (results included) is swept of files older
than 15 minutes. Messages never show server paths.
"""

from __future__ import annotations

import argparse
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from otseg.data.classes import parse_class_text
from otseg.image_io import describe_source, read_image
from otseg.model_arguments import add_model_arguments, predictor_from_args
from otseg.predictor import Predictor

if TYPE_CHECKING:  # pragma: no cover - typing only
    import gradio

__all__ = [
    "ELEM_IDS",
    "INSTALL_HINT",
    "add_serve_parser",
    "build_app",
    "cmd_serve",
    "import_gradio",
    "launch",
    "make_segment_fn",
    "split_class_names",
]

INSTALL_HINT = "pip install 'otseg[web]'"
DEFAULT_MAX_CLASSES = 64
DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_MAX_PIXELS = 16_000_000
_REMEMBERED_UPLOADS = 4  # decoded uploads kept in memory after their file is deleted (same image, new classes)
_CACHE_SWEEP = (300, 900)  # gradio deletes its cached files older than 15 minutes, every 5 minutes
# An absolute path of two or more parts (/tmp/gradio/abc/photo.png), to be kept out of visitors' messages.
_SERVER_PATH = re.compile(r"(?<![\w.])(?:/[^\s'\":,;]+){2,}")

# HTML ids of the page's parts, for styling and for driving the page from a browser (the tests do).
ELEM_IDS = {
    "image": "otseg-image",
    "classes": "otseg-classes",
    "button": "otseg-segment",
    "overlay": "otseg-overlay",
    "fractions": "otseg-fractions",
}


def import_gradio() -> Any:
    """Import gradio with its usage analytics off, or fail with a one-line message saying how to install it.

    Raises:
        RuntimeError: gradio is not installed (`otseg` turns this into `otseg serve: error: ...`).
    """
    # Gradio reads this when imported: no analytics or version-check requests to api.gradio.app.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as e:
        raise RuntimeError(
            f"the web demo needs gradio, which is not installed ({e}); install with {INSTALL_HINT}"
        ) from None
    return gradio


def split_class_names(text: str | None) -> list[str]:
    """'cat, sofa,wall' (commas or new lines) -> ['cat', 'sofa', 'wall'], through the one class-list parser.

    Unlike `otseg.segment.parse_class_list`, a name ending in .txt is never read as a file: on a web page the
    text comes from a visitor, who must not be able to make the server read its files.

    Raises:
        ValueError: the text holds no names, an empty, over-long or repeated one.
    """
    message_prefix = "class names"
    try:
        return parse_class_text(text or "", message_prefix)
    except ValueError as e:
        raise ValueError(str(e).removeprefix(f"{message_prefix}: ")) from None


def _scrub_paths(message: str, image_path: str | None) -> str:
    """A message for a visitor: the upload's server path becomes "the uploaded image", any other server path
    "<server path>"."""
    if image_path:
        message = message.replace(str(image_path), "the uploaded image")
    return _SERVER_PATH.sub("<server path>", message)


def make_segment_fn(
    predictor: Predictor,
    max_classes: int = DEFAULT_MAX_CLASSES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    upload_dir: str | os.PathLike[str] | None = None,
) -> Callable[[str | None, str | None], tuple[Any, dict[str, float]]]:
    """The page's "Segment" action: (uploaded image path, class-name text) -> (overlay PIL image, class fractions).

    Args:
        predictor: what segments.
        max_classes: the most class names one request may give.
        max_pixels: the largest image accepted, in pixels (None: the library default, $OTSEG_MAX_PIXELS).
        upload_dir: gradio's upload folder; a file inside it is deleted once read (files elsewhere, e.g. given
            from Python, are left alone).

    Bad input raises `gradio.Error`, which the page shows as a message (never a traceback, never a server path).
    """
    gr = import_gradio()
    uploads = Path(upload_dir).resolve() if upload_dir is not None else None
    remembered: OrderedDict[str, np.ndarray] = OrderedDict()
    lock = threading.Lock()

    def read_upload(image_path: str) -> np.ndarray:
        path = Path(image_path).resolve()
        ours = uploads is not None and path.is_relative_to(uploads)
        with lock:
            rgb = remembered.get(image_path)
            if rgb is not None:
                remembered.move_to_end(image_path)
        if rgb is None:
            rgb = read_image(image_path, max_pixels=max_pixels)
        if ours:
            # Used: the upload leaves the server's disk (gradio names uploads by content, so the same picture
            # uploaded again lands on the same path and is removed again).
            path.unlink(missing_ok=True)
            with lock:
                remembered[image_path] = rgb
                while len(remembered) > _REMEMBERED_UPLOADS:
                    remembered.popitem(last=False)
        return rgb

    def segment(image_path: str | None, class_text: str | None) -> tuple[Any, dict[str, float]]:
        if not image_path:
            raise gr.Error("Upload an image first.", title="No image", print_exception=False)
        try:
            names = split_class_names(class_text)
            if len(names) > max_classes:
                raise ValueError(
                    f"{len(names)} class names given; this page takes at most {max_classes} per request "
                    "(otseg serve --max-classes N raises the limit)"
                )
            names = predictor.prepare_classes(names)
            rgb = read_upload(image_path)
            try:
                prediction = predictor.predict(rgb, names)
            except ValueError as e:  # messages name the in-memory array; the visitor knows it as the upload
                raise ValueError(str(e).replace(describe_source(rgb), "the uploaded image")) from None
        except (ValueError, TypeError, OSError) as e:
            message = _scrub_paths(str(e), image_path)
            if isinstance(e, FileNotFoundError):
                message = "The uploaded image is no longer on the server; upload it again."
            raise gr.Error(message[:1].upper() + message[1:], title="Cannot segment", print_exception=False) from None
        if prediction.note is not None:
            gr.Warning(prediction.note[:1].upper() + prediction.note[1:], title="Words the model does not know")
        return prediction.overlay(), prediction.fractions()

    return segment


def _explain_unreadable_uploads(image: Any, gr: Any) -> Any:
    """Make an image input turn an upload it cannot open into a page message instead of a bare "Error".

    Gradio opens the uploaded file itself (to apply the image mode) before the page's function runs. The
    instance's `preprocess` is wrapped rather than gr.Image subclassed: gradio writes a `.pyi` stub beside the
    source file of every component subclass, which must not happen inside an installed package.
    """
    preprocess = image.preprocess

    def checked_preprocess(payload: Any) -> Any:
        path = getattr(payload, "path", None)
        if path and not Path(path).exists():
            return path  # an upload already read and deleted: the segment function still holds its pixels
        try:
            return preprocess(payload)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # PIL: unreadable, broken, bomb
            name = getattr(payload, "orig_name", None) or "the uploaded file"
            raise gr.Error(
                f"{name} is not an image that can be read (corrupt, or an unsupported format); "
                "upload a PNG, JPEG, WebP, BMP, TIFF or GIF file",
                title="Unreadable image",
                print_exception=False,
            ) from None

    image.preprocess = checked_preprocess
    return image


def build_app(
    predictor: Predictor,
    title: str = "OTSeg zero-shot segmentation",
    max_classes: int = DEFAULT_MAX_CLASSES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> gradio.Blocks:
    """The demo page for `predictor`, as a `gradio.Blocks` (not launched; serve it with `launch`).

    Args:
        predictor: the `otseg.Predictor` that segments. Calls are serialised (one at a time), which bounds the
            server's memory and time to one request's.
        title: the page's title and heading.
        max_classes: the most class names one request may give.
        max_pixels: the largest image accepted, in pixels.
    """
    gr = import_gradio()
    defaults = ", ".join(predictor.default_class_names)
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=_CACHE_SWEEP) as app:
        gr.Markdown(
            f"# {title}\n"
            "Upload an image, type the classes to look for (comma-separated, any words the model's text tower "
            "can embed) and press **Segment**. The result shows each pixel's best class over the image, with a "
            f"legend, and the share of the image given to each class.  \nModel: `{predictor!r}`"
            + (
                f"  \nThis model knows only these words: {', '.join(sorted(predictor.vocabulary))}."
                if predictor.vocabulary is not None
                else ""
            )
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    label="Image",
                    type="filepath",
                    image_mode=None,  # hand the file over as uploaded: otseg reads any mode, EXIF orientation
                    sources=["upload", "clipboard"],
                    elem_id=ELEM_IDS["image"],
                )
                _explain_unreadable_uploads(image, gr)
                segment = make_segment_fn(predictor, max_classes, max_pixels, upload_dir=image.GRADIO_CACHE)
                classes = gr.Textbox(
                    value=defaults,
                    label="Class names (comma-separated)",
                    placeholder="cat, sofa, wall",
                    lines=2,
                    elem_id=ELEM_IDS["classes"],
                )
                button = gr.Button("Segment", variant="primary", elem_id=ELEM_IDS["button"])
            with gr.Column():
                overlay = gr.Image(
                    label="Segmentation (legend at the right)",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id=ELEM_IDS["overlay"],
                )
                fractions = gr.Label(label="Share of the image per class", elem_id=ELEM_IDS["fractions"])
        gr.on(
            triggers=[button.click, classes.submit],
            fn=segment,
            inputs=[image, classes],
            outputs=[overlay, fractions],
            api_name="segment",
            concurrency_limit=1,
        )
    return app


def launch(
    app: gradio.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
) -> tuple[Any, str, str | None]:
    """Serve the page: blocks until Ctrl+C, or returns at once with `prevent_thread_lock=True` (close with
    `app.close()`). Returns gradio's (FastAPI app, local URL, share URL or None).

    Analytics, server-side rendering (which would need Node.js), the MCP server and the PWA manifest are off;
    `share=True` asks gradio.live for a public link (downloads gradio's tunnel client; needs the internet).
    Uploads over `max_upload_mb` megabytes are refused by gradio.
    """
    return app.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        show_error=True,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        max_file_size=int(max_upload_mb * 1024 * 1024),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """`otseg serve`: load the model, build the page and serve it until Ctrl+C."""
    import_gradio()  # fail fast, before a model is loaded (loading one takes seconds to minutes)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    for name in ("max_classes", "max_upload_mb", "max_pixels"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    predictor = predictor_from_args(args)
    app = build_app(predictor, max_classes=args.max_classes, max_pixels=args.max_pixels)
    _, local_url, share_url = launch(
        app,
        host=args.host,
        port=args.port,
        share=args.share,
        prevent_thread_lock=True,
        quiet=True,
        max_upload_mb=args.max_upload_mb,
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


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `otseg serve` on an argparse subparsers object (`parser.add_subparsers()`)."""
    p = subparsers.add_parser(
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
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest image accepted, in pixels, checked before decoding (default: {DEFAULT_MAX_PIXELS:,})",
    )
    p.set_defaults(func=cmd_serve)
    return p
