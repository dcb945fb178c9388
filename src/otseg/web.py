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

Limits, so that no visitor can hurt the server (docs/safety-inputs.md lists them): a request body larger than
`--max-upload-mb` (default 20 MB) is refused (413) before it is read or as soon as it grows past the cap; at most
two large bodies are received at once (the others wait, then get 503), and each must arrive within two minutes;
gradio's cache folder (uploads and results) is kept under `--max-cache-mb` (default 200 MB) by deleting its
oldest files; images over `--max-pixels` (default 16 million) are refused from their header, before decoding;
at most `--max-classes` names (default 64) are taken per request, and one request runs at a time. An uploaded
file is deleted from the server as soon as it has been read, and also when it is refused (not an image, too
many pixels); the decoded picture stays in memory for a few further requests with other class names (so a
visitor who fixes the class names need not upload again). Gradio's own sweep deletes cached files older than 15
minutes. Messages never show server paths. `otseg serve` gives the server a private cache folder (removed when
it stops) unless $GRADIO_TEMP_DIR names one.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from otseg.data.classes import class_list_note, parse_class_text
from otseg.errors import BadValueError, MissingExtraError
from otseg.image_io import IMAGE_FORMATS, describe_source, read_image
from otseg.predictor import Predictor
from otseg.warning_lines import without_object_reprs
from otseg.web_budget import CacheBudget, UploadBudget

if TYPE_CHECKING:  # pragma: no cover - typing only
    import gradio

__all__ = [
    "ELEM_IDS",
    "INSTALL_HINT",
    "TooManyPixelsError",
    "build_app",
    "check_upload_header",
    "import_gradio",
    "launch",
    "make_segment_fn",
    "split_class_names",
]

INSTALL_HINT = "pip install 'otseg[web]'"
DEFAULT_MAX_CLASSES = 64
DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_MAX_PIXELS = 16_000_000
DEFAULT_MAX_CACHE_MB = 200
MAX_CONCURRENT_UPLOADS = 2  # large request bodies received at once: bytes in flight <= 2 x --max-upload-mb
_BODY_OVERHEAD_BYTES = 64 * 1024  # multipart headers around an upload of --max-upload-mb
_REMEMBERED_UPLOADS = 4  # decoded uploads kept in memory after their file is deleted (same image, new classes)
_CACHE_SWEEP = (300, 900)  # gradio deletes its cached files older than 15 minutes, every 5 minutes
# An absolute path of two or more parts (/tmp/gradio/abc/photo.png), to be kept out of visitors' messages.
_SERVER_PATH = re.compile(r"(?<![\w.])(?:/[^\s'\":,;]+){2,}")
_UNREADABLE = (
    "is not an image that can be read (corrupt, or an unsupported format); upload a PNG, JPEG, WebP, BMP, TIFF or "
    "GIF file"
)

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
        raise MissingExtraError(
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
        raise BadValueError(str(e).removeprefix(f"{message_prefix}: ")) from None


def _scrub_paths(message: str, image_path: str | None, name: str = "") -> str:
    """A message for a visitor: the upload's server path becomes "the uploaded image NAME", any other server path
    "<server path>", object reprs go."""
    if image_path:
        upload = f"the uploaded image {name}".rstrip()
        message = message.replace(f"image {image_path}", upload).replace(str(image_path), upload)
    message = without_object_reprs(message)  # <_io.BytesIO object at 0x...>: nothing for a visitor
    return _SERVER_PATH.sub("<server path>", message)


def _visible_name(name: str | None, path: str | os.PathLike[str] | None = None) -> str:
    """The upload's own file name, for messages: printable characters only, at most 80."""
    text = name or (Path(path).name if path else "") or "the uploaded file"
    text = "".join(c for c in text if c.isprintable())
    return text if len(text) <= 80 else text[:77] + "..."


def _in_folder(path: str | os.PathLike[str], folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        return Path(path).resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False


class TooManyPixelsError(BadValueError):
    """An upload with more pixels than the page takes (not a broken file)."""


def check_upload_header(path: str | os.PathLike[str], name: str, max_pixels: int | None) -> None:
    """Refuse an upload from its header alone (nothing is decoded): not an image PIL can identify, or more pixels
    than `max_pixels` (PIL's own bomb limit included). The message is for the visitor: it names the upload by its
    own file name, never by its server path.

    Raises:
        TooManyPixelsError: over the pixel cap (a ValueError).
        ValueError: not an image that can be read.
    """
    cap = max_pixels if max_pixels is not None else DEFAULT_MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's bomb warning (several lines on stderr): our cap decides
            with Image.open(path, formats=IMAGE_FORMATS) as im:
                width, height = im.size
    except Image.DecompressionBombError:
        raise TooManyPixelsError(
            f"The uploaded image {name} has more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels, over the limit "
            f"of {cap:,} pixels that this page takes: shrink it and upload it again"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError):  # PIL: not an image, truncated header
        raise BadValueError(f"The uploaded file {name} {_UNREADABLE}") from None
    if width * height > cap:
        raise TooManyPixelsError(
            f"The uploaded image {name} is {width}x{height} = {width * height:,} pixels, over the limit of {cap:,} "
            "pixels that this page takes: shrink it and upload it again"
        )


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
        upload_dir: gradio's upload folder; a file inside it is deleted once read, or once refused (files
            elsewhere, e.g. given from Python, are left alone).

    The upload is read first and the class names checked after, so that a visitor who fixes the names does not
    upload again (the decoded picture is remembered). Bad input raises `gradio.Error`, which the page shows as a
    message (never a traceback, never a server path).
    """
    gr = import_gradio()
    uploads = Path(upload_dir).resolve() if upload_dir is not None else None
    remembered: OrderedDict[str, np.ndarray] = OrderedDict()
    lock = threading.Lock()

    def read_upload(image_path: str, name: str) -> np.ndarray:
        ours = _in_folder(image_path, uploads)
        with lock:
            rgb = remembered.get(image_path)
            if rgb is not None:
                remembered.move_to_end(image_path)
        if rgb is not None:
            if ours:  # the same picture uploaded again (gradio names uploads by content): it goes again
                Path(image_path).unlink(missing_ok=True)
            return rgb
        try:
            check_upload_header(image_path, name, max_pixels)
            rgb = read_image(image_path, max_pixels=max_pixels)
        except FileNotFoundError:
            raise
        except (ValueError, OSError, MemoryError):
            if ours:  # refused: it leaves the server's disk too
                Path(image_path).unlink(missing_ok=True)
            raise
        if ours:
            # Used: the upload leaves the server's disk (gradio names uploads by content, so the same picture
            # uploaded again lands on the same path and is removed again).
            Path(image_path).unlink(missing_ok=True)
            with lock:
                remembered[image_path] = rgb
                while len(remembered) > _REMEMBERED_UPLOADS:
                    remembered.popitem(last=False)
        return rgb

    def segment(image_path: str | None, class_text: str | None) -> tuple[Any, dict[str, float]]:
        if not image_path:
            raise gr.Error("Upload an image first.", title="No image", print_exception=False)
        name = _visible_name(None, image_path)
        try:
            rgb = read_upload(image_path, name)
            names = split_class_names(class_text)
            if len(names) > max_classes:
                raise BadValueError(
                    f"{len(names)} class names given; this page takes at most {max_classes} per request "
                    "(otseg serve --max-classes N raises the limit)"
                )
            names = predictor.prepare_classes(names)
            try:
                prediction = predictor.predict(rgb, names)
            except ValueError as e:  # messages name the in-memory array; the visitor knows it as the upload
                raise BadValueError(str(e).replace(describe_source(rgb), f"the uploaded image {name}")) from None
        except MemoryError:
            raise gr.Error(
                f"The server has not enough memory for {name} with these classes; try a smaller image or fewer "
                "class names.",
                title="Cannot segment",
                print_exception=False,
            ) from None
        except (ValueError, TypeError, OSError) as e:
            message = _scrub_paths(str(e), image_path, name)
            if isinstance(e, FileNotFoundError):
                message = "The uploaded image is no longer on the server; upload it again."
            raise gr.Error(message[:1].upper() + message[1:], title="Cannot segment", print_exception=False) from None
        if prediction.note is not None:
            gr.Warning(prediction.note[:1].upper() + prediction.note[1:], title="Words the model does not know")
        list_note = class_list_note(names)
        if list_note is not None:
            gr.Warning(list_note[:1].upper() + list_note[1:], title="One class")
        return prediction.overlay(), prediction.fractions()

    return segment


def _hand_over_uploads(image: Any, gr: Any, max_pixels: int | None) -> Any:
    """Make an image input hand the uploaded file's path to the page's function after a header check, instead of
    gradio's own preprocessing (which opens the file with PIL, printing PIL's multi-line bomb warning and calling
    an image over PIL's limit unreadable, and leaves refused uploads on disk).

    A refused upload (not an image, over the pixel cap) is deleted and explained; an upload sent inline as a
    data: URL (API clients only) is refused: the page takes files. The instance's `preprocess` is replaced rather
    than gr.Image subclassed: gradio writes a `.pyi` stub beside the source file of every component subclass,
    which must not happen inside an installed package.
    """
    cache = Path(image.GRADIO_CACHE).resolve()

    def checked_preprocess(payload: Any) -> Any:
        if payload is None:
            return None
        url = getattr(payload, "url", None) or ""
        path = getattr(payload, "path", None)
        if url.startswith("data:") or not path:
            raise gr.Error(
                "Send the image as a file upload (this page does not take images inline as data: URLs).",
                title="Unreadable image",
                print_exception=False,
            )
        if not Path(path).exists():
            return path  # an upload already read and deleted: the segment function still holds its pixels
        name = _visible_name(getattr(payload, "orig_name", None), path)
        try:
            check_upload_header(path, name, max_pixels)
        except ValueError as e:
            if _in_folder(path, cache):
                Path(path).unlink(missing_ok=True)
            over = isinstance(e, TooManyPixelsError)
            raise gr.Error(
                str(e), title="Image too large" if over else "Unreadable image", print_exception=False
            ) from None
        return str(path)

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
                _hand_over_uploads(image, gr, max_pixels)
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
    max_cache_mb: float = DEFAULT_MAX_CACHE_MB,
) -> tuple[Any, str, str | None]:
    """Serve the page: blocks until Ctrl+C, or returns at once with `prevent_thread_lock=True` (close with
    `app.close()`). Returns gradio's (FastAPI app, local URL, share URL or None).

    Analytics, server-side rendering (which would need Node.js), the MCP server and the PWA manifest are off;
    `share=True` asks gradio.live for a public link (downloads gradio's tunnel client; needs the internet).
    Request bodies over `max_upload_mb` megabytes are refused, at most `MAX_CONCURRENT_UPLOADS` large ones are
    received at once, and the page's cache folder is kept under `max_cache_mb` megabytes (`UploadBudget`).
    """
    from starlette.middleware import Middleware  # installed with gradio

    max_upload = int(max_upload_mb * 1024 * 1024)
    max_cache = int(max_cache_mb * 1024 * 1024)
    if max_cache < max_upload:
        raise BadValueError(
            f"--max-cache-mb {max_cache_mb:g} is smaller than --max-upload-mb {max_upload_mb:g}: the cache must "
            "hold at least one upload"
        )
    max_body = max_upload + _BODY_OVERHEAD_BYTES
    budget = Middleware(
        UploadBudget,  # type: ignore[arg-type]  # an ASGI middleware class, as Starlette takes them
        max_body_bytes=max_body,
        # The bodies on their way all fit in the cache at once: none is evicted while it arrives.
        max_concurrent=max(1, min(MAX_CONCURRENT_UPLOADS, max_cache // max_body)),
        cache=CacheBudget(app.GRADIO_CACHE, max_cache),
    )
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
        max_file_size=max_upload,
        app_kwargs={"middleware": [budget]},
    )
