"""ONNX export of the OTSeg segmentor for a fixed class set, and numpy helpers to run the exported file.

    >>> from otseg.export import export_onnx
    >>> export_onnx(model, "otseg.onnx")                       # the model's current classes, baked in
    >>> import onnxruntime as ort
    >>> from otseg.export import normalise_image, onnx_slide_inference
    >>> session = ort.InferenceSession("otseg.onnx", providers=["CPUExecutionProvider"])
    >>> scores = onnx_slide_inference(session, normalise_image(rgb, session))   # (1, K, H, W)
    >>> result = onnx_segment_image(session, "photo.jpg")      # or all of it from an image file: a Prediction

What is exported: `model.encode_decode(image)`, the whole-image test forward, for the model's current class set
(the (K, N, D) class text embeddings are constants of the graph). Input `image`: float32 (B, 3, H, W) normalised
with the config's mean/std on the 0..255 scale; output `scores`: float32 (B, K, H, W), the sigmoid of the OTSeg+
ensemble minus the seen-class bias where the config applies it, upsampled to the input size. H and W are fixed
(default `config.crop_size`: the ViT's positional table is resampled for that grid at export time); the batch
dimension is dynamic. Larger images go through `onnx_slide_inference` (the reference's sliding window, in numpy).

Sinkhorn: the reference's data-dependent stopping rule (stop when the potentials stop moving) needs the host to look
at every iteration, which a static graph cannot do. The export therefore runs `sinkhorn_iters` iterations per call
with no check (`otseg.ops.sinkhorn`'s `fixed_iters`), default `config.head.sinkhorn_max_iter` = the reference's
cap, so every problem runs at least as long as the reference lets it. The log-domain update is used: it cannot
overflow for any eps, whereas the default scaling update relies on a host-side overflow check that a graph cannot
carry. Batched images stay independent (the reference's stopping statistic is global over a batch; a fixed count
is not), so a batch of B gives each image's own result.

Exporter: the torch.export-based exporter (`torch.onnx.export(..., dynamo=True)`, needs `onnxscript`), the default
since torch 2.9. The legacy TorchScript exporter is deprecated and cannot trace the in-place scaling update.

Progress: the export spends minutes inside `torch.onnx.export`, most of them in the exporter's decompositions, and
several times that on a loaded machine (docs/speed.md gives the times). `export_onnx(..., progress=print)` names
each of the exporter's stages as it starts (tracing, decompositions, translation, optimisation), says how long each
took, gives an estimate for the stages after tracing (from the tracing's time and the stages' measured ratios), and
prints a line every `PROGRESS_EVERY_S` seconds while a stage runs, so a slow machine never looks hung.

Everything a user needs to run the file alone is stored in its `metadata_props` (keys `otseg.*`, values JSON):
class names, seen classes, mean, std, input size, crop size, stride, test short side, Sinkhorn iterations, the
full model config; and in a sidecar `OUT.onnx.json` with the same content.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from otseg.data.transforms import TestResize
from otseg.errors import BadValueError, MissingExtraError, MissingFileError
from otseg.image_io import read_image
from otseg.model.inference_options import InferenceOptions
from otseg.model.segmentor import OTSeg, slide_windows
from otseg.ops.sinkhorn_options import SinkhornOptions, SinkhornUpdate
from otseg.predictor import Prediction
from otseg.utils import atomic_write, atomic_write_text
from otseg.version import __version__

__all__ = [
    "DEFAULT_OPSET",
    "ONNX_FORMAT",
    "PROGRESS_EVERY_S",
    "StageClock",
    "compare_with_onnxruntime",
    "export_onnx",
    "exported_options",
    "normalise_image",
    "onnx_metadata",
    "onnx_segment_image",
    "onnx_slide_inference",
    "require_module",
]

ONNX_FORMAT = "otseg-onnx"
ONNX_FORMAT_VERSION = 1
DEFAULT_OPSET = 18  # the opset torch's ONNX function library is written in: no version conversion needed
SINKHORN_UPDATE: SinkhornUpdate = "log"  # see the module docstring
_META_PREFIX = "otseg."
_INSTALL_HINT = "pip install 'otseg[onnx]'  (onnx, onnxscript, onnxruntime)"
PROGRESS_EVERY_S = 30.0  # while a stage of the export runs, a line this often

# The exporter's stages, by the start of the message `torch.onnx.export(verbose=None)` prints for each:
# (what we call it, its time relative to the tracing's). The ratios are CPU times of the demo model's export
# (`--model demo`, 100 Sinkhorn iterations) measured on this project's 2-core CPU; they give the estimates.
_EXPORTER_STAGES: dict[str, tuple[str, float | None]] = {
    "Obtain model graph": ("tracing the model (torch.export)", None),
    "Run decompositions": ("decomposing to core ATen operators", 2.9),
    "Translate the graph into ONNX": ("translating the graph to ONNX", 0.1),
    "Optimize the ONNX graph": ("optimising the ONNX graph", 1.0),
}


# ------------------------------------------------------------------------------------------------ dependencies
def require_module(module: str, purpose: str) -> Any:
    """Import an optional dependency, or raise a RuntimeError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{purpose} needs the Python package {module!r}, which is not installed: {_INSTALL_HINT}"
        ) from e


# ------------------------------------------------------------------------------------------------ export
def exported_options(sinkhorn_iters: int, update: SinkhornUpdate = SINKHORN_UPDATE) -> InferenceOptions:
    """The inference options the graph is traced with: the config's ensemble weight and seen bias, and the Sinkhorn
    at `sinkhorn_iters` fixed iterations with the given update (the export's is `SINKHORN_UPDATE`)."""
    return InferenceOptions(sinkhorn=SinkhornOptions(fixed_iters=sinkhorn_iters, update=update))


class _EncodeDecode(nn.Module):
    """The graph that is exported: images (B, 3, H, W) -> scores (B, K, H, W), `OTSeg.encode_decode` with fixed
    inference options (constants of the graph)."""

    def __init__(self, model: OTSeg, options: InferenceOptions) -> None:
        super().__init__()
        self.model = model
        self.options = options

    def forward(self, image: Tensor) -> Tensor:
        return self.model.encode_decode(image, options=self.options)


def _as_size(image_size: int | Sequence[int] | None, model: OTSeg) -> tuple[int, int]:
    """The fixed (H, W) of the export, validated against the patch size."""
    if image_size is None:
        size = (model.config.crop_size, model.config.crop_size)
    elif isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        pair = tuple(int(s) for s in image_size)
        if len(pair) != 2:
            raise BadValueError(f"image_size must be an int or (height, width), got {image_size!r}")
        size = (pair[0], pair[1])
    patch = model.config.vision.patch_size
    if any(s <= 0 or s % patch for s in size):
        raise BadValueError(
            f"image size {size[0]}x{size[1]} is not a positive multiple of the patch size {patch}; "
            f"pick e.g. {model.config.crop_size} (the model's crop size)"
        )
    return size[0], size[1]


@contextlib.contextmanager
def _class_set(model: OTSeg, class_names: Sequence[str] | None) -> Iterator[None]:
    """Use `class_names` (embedded with the model's text tower) inside the block; restore the model's own after."""
    if class_names is None or (model.has_class_embeddings and list(class_names) == model.class_names):
        yield
        return
    if model.text_encoder is None:
        raise BadValueError(
            "this model has no CLIP text tower, so it cannot embed new class names: load it with its CLIP weights "
            "(--clip ViT-B-16.pt) or export its own classes (leave out class_names/--classes)"
        )
    saved = (model.class_embeddings, list(model.class_names), model.seen_mask, model.has_class_embeddings)
    model.set_classes(list(class_names))
    try:
        yield
    finally:
        model.class_embeddings, model.class_names, model.seen_mask, model.has_class_embeddings = saved


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (missing torchvision ops, deprecations inside torch) for the export only."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


class StageClock:
    """Reports stages: a line when one starts (with an estimate when there is one), a line every `every_s`
    seconds while it runs (from a timer thread), and its time when it ends. `report` is never called with the
    lock held (it may print through `_ExporterMessages`, whose lines start and end stages)."""

    def __init__(self, report: Callable[[str], None], every_s: float = PROGRESS_EVERY_S) -> None:
        self.report = report
        self.every_s = every_s
        self.lock = threading.Lock()
        self.label: str | None = None
        self.started = 0.0
        self.last_line = 0.0  # when the running stage last printed
        self.estimate: float | None = None
        self.durations: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StageClock:
        self._thread = threading.Thread(target=self._beat, name="otseg-export-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def start(self, label: str, estimate_s: float | None = None) -> None:
        with self.lock:
            lines = [self._end_locked("")] if self.label is not None else []  # a stage that never said it ended
            self.label, self.estimate = label, estimate_s
            self.started = self.last_line = time.perf_counter()
        about = f" (about {estimate_s:.0f} s)" if estimate_s is not None else ""
        for line in [*lines, f"  {label}{about} ..."]:
            self.report(line)

    def end(self, note: str = "") -> None:
        with self.lock:
            line = self._end_locked(note) if self.label is not None else None
        if line is not None:
            self.report(line)

    def _end_locked(self, note: str) -> str:
        assert self.label is not None
        seconds = time.perf_counter() - self.started
        self.durations[self.label] = seconds
        line = f"  {self.label}: {seconds:.1f} s{note}"
        self.label = None
        return line

    def _beat(self) -> None:
        while not self._stop.wait(min(self.every_s, 1.0)):
            with self.lock:
                now = time.perf_counter()
                if self.label is None or now - self.last_line < self.every_s:
                    continue
                label, estimate, elapsed, self.last_line = self.label, self.estimate, now - self.started, now
            line = f"  ... {label}: {elapsed:.0f} s so far"
            if estimate is not None:
                line += f", about {estimate:.0f} s expected"
                if elapsed > 1.5 * estimate:
                    line += " (longer than estimated: the machine is busy, or this stage is slower here)"
            self.report(line)


class _ExporterMessages(io.TextIOBase):
    """Stands in for stdout while `torch.onnx.export(verbose=None)` runs: its "[torch.onnx] STAGE..." lines start
    and end `clock`'s stages (estimated from the tracing's time); every other line goes on to `stream`."""

    def __init__(self, clock: StageClock, stream: io.TextIOBase | Any) -> None:
        self.clock = clock
        self.stream = stream
        self.pending = ""
        self.lock = threading.Lock()  # the clock's timer thread prints through here too

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            self.pending += text
            *lines, self.pending = self.pending.split("\n")
        for line in lines:  # outside the lock: a stage line makes the clock report, which prints through here
            self._line(line)
        return len(text)

    def flush(self) -> None:
        with self.lock:
            rest, self.pending = self.pending, ""
        if rest:
            self._line(rest)
        self.stream.flush()

    def _line(self, line: str) -> None:
        message = line.strip().removeprefix("[torch.onnx]").strip()
        for prefix, (label, ratio) in _EXPORTER_STAGES.items():
            if line.lstrip().startswith("[torch.onnx]") and message.startswith(prefix):
                if message.endswith("✅"):
                    self.clock.end()
                elif message.endswith("❌"):
                    self.clock.end(" (failed" + ("; the exporter tries another way)" if ratio is None else ")"))
                else:
                    tracing = self.clock.durations.get(_EXPORTER_STAGES["Obtain model graph"][0])
                    self.clock.start(label, None if ratio is None or tracing is None else ratio * tracing)
                return
        self.stream.write(line + "\n")


def export_metadata(model: OTSeg, image_size: tuple[int, int], sinkhorn_iters: int, opset: int) -> dict[str, Any]:
    """What is stored with an export (metadata_props and the sidecar JSON), as plain JSON values."""
    cfg = model.config
    return {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "otseg_version": __version__,
        "class_names": list(model.class_names),
        "seen_classes": [int(i) for i in torch.nonzero(model.seen_mask).flatten().tolist()],
        "seen_bias_applied": bool(cfg.apply_seen_bias and cfg.head.seen_bias),
        "input_name": "image",
        "output_name": "scores",
        "input_size": list(image_size),
        "input_layout": "float32 (B, 3, H, W), RGB, (pixel in 0..255 - mean) / std",
        "output_layout": "float32 (B, K, H, W) class scores; argmax over K gives the label map",
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "crop_size": cfg.crop_size,
        "stride": cfg.stride,
        "test_mode": cfg.test_mode,
        "test_short_side": cfg.test_short_side,
        "sinkhorn_iters": sinkhorn_iters,
        "sinkhorn_update": SINKHORN_UPDATE,
        "opset": opset,
        "config": cfg.to_dict(),
    }


def export_onnx(
    model: OTSeg,
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    image_size: int | Sequence[int] | None = None,
    sinkhorn_iters: int | None = 100,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    sidecar: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Export `model.encode_decode` for a fixed class set to an ONNX file, atomically.

    Args:
        model: an OTSeg model with class embeddings (or a text tower and `class_names`).
        path: the .onnx file to write (parent folders are created; an existing file is replaced only on success).
        class_names: export these classes instead of the model's own, embedded with the model's CLIP text tower;
            the model's own class set is restored afterwards.
        image_size: fixed input (H, W), or one int for a square; multiples of the patch size.
            Default `config.crop_size` (what `onnx_slide_inference` feeds it).
        sinkhorn_iters: Sinkhorn iterations per call in the graph (no stopping check); None =
            `config.head.sinkhorn_max_iter`. Fewer iterations make a smaller, faster graph and move the scores
            further from the reference's (see `otseg.ops.sinkhorn`).
        opset: ONNX opset (>= 18).
        dynamic_batch: make the batch dimension dynamic (else it is fixed at 1).
        sidecar: also write `<path>.json` with the metadata.
        progress: called with a line of text as each stage of the export starts and ends, and every
            `PROGRESS_EVERY_S` seconds while one runs (the module docstring); None: silent.

    Returns:
        The path written. The graph maps `image` float32 (B, 3, H, W) -> `scores` float32 (B, K, H, W), equal to
        `model.encode_decode(image, options=exported_options(sinkhorn_iters))` (the Sinkhorn at `sinkhorn_iters`
        fixed iterations, log-domain update).
    """
    if not isinstance(model, OTSeg):
        raise TypeError(f"export_onnx needs an otseg.OTSeg model, got {type(model).__name__}")
    out = Path(path)
    if out.is_dir():
        raise BadValueError(f"{out} is a folder; give the path of the .onnx file to write, e.g. {out / 'otseg.onnx'}")
    iters = model.config.head.sinkhorn_max_iter if sinkhorn_iters is None else int(sinkhorn_iters)
    if iters < 1:
        raise BadValueError(f"sinkhorn_iters must be >= 1, got {sinkhorn_iters}")
    if not isinstance(opset, int) or opset < DEFAULT_OPSET:
        raise BadValueError(
            f"opset must be an int >= {DEFAULT_OPSET} (torch's exporter writes opset 18+), got {opset!r}"
        )
    height, width = _as_size(image_size, model)
    require_module("onnxscript", "ONNX export (torch.onnx's exporter)")
    require_module("onnx", "ONNX export")

    with _class_set(model, class_names):
        if not model.has_class_embeddings:
            raise BadValueError(
                "the model has no class text embeddings to bake into the export: give class_names (--classes, "
                "needs the CLIP text tower) or load a model saved with its embeddings"
            )
        device = next(model.parameters()).device
        # Batch 2 for the example: torch.export specialises a dynamic dimension whose example size is 0 or 1.
        batch = 2 if dynamic_batch else 1
        example = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device)
        dynamic_shapes = {"image": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
        was_training = model.training
        model.eval()
        clock = StageClock(progress) if progress is not None else None
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(_quiet_exporter())
                stack.enter_context(torch.no_grad())
                if clock is not None:  # the exporter names its stages on stdout (verbose=None): follow them
                    stack.enter_context(clock)
                    messages = _ExporterMessages(clock, sys.stdout)
                    stack.enter_context(contextlib.redirect_stdout(messages))
                    stack.callback(messages.flush)
                program = torch.onnx.export(
                    _EncodeDecode(model, exported_options(iters)).eval(),
                    (example,),
                    dynamo=True,
                    input_names=["image"],
                    output_names=["scores"],
                    opset_version=opset,
                    dynamic_shapes=dynamic_shapes,
                    external_data=False,
                    optimize=True,
                    verbose=None if clock is not None else False,
                )
                if clock is not None:
                    clock.end()
        except Exception as e:
            raise RuntimeError(f"ONNX export of {model.config.name} failed: {type(e).__name__}: {e}") from e
        finally:
            model.train(was_training)
        meta = export_metadata(model, (height, width), iters, opset)
    if program is None:  # torch.onnx.export returns None only for the legacy exporter, which is not used here
        raise RuntimeError(f"ONNX export of {model.config.name} returned no program")

    program.model.metadata_props.update({_META_PREFIX + k: json.dumps(v) for k, v in meta.items()})
    program.model.doc_string = (
        f"OTSeg segmentor {model.config.name}: image (B, 3, {height}, {width}) normalised -> scores "
        f"(B, {len(meta['class_names'])}, {height}, {width}); classes: {', '.join(meta['class_names'])}"
    )
    if progress is not None:
        progress(f"  writing {out.name} ...")
    atomic_write(out, lambda tmp: program.save(tmp, external_data=False))
    if sidecar:
        atomic_write_text(out.with_name(out.name + ".json"), json.dumps(meta, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------------------ running it
def onnx_metadata(source: Any) -> dict[str, Any]:
    """The `otseg.*` metadata of an export, decoded: from an onnxruntime session, or a path to the .onnx file.

    Raises ValueError when the file was not written by `export_onnx`.
    """
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.is_file():
            raise MissingFileError(f"ONNX file {p} does not exist")
        onnx = require_module("onnx", "reading ONNX metadata")
        raw = {prop.key: prop.value for prop in onnx.load(str(p), load_external_data=False).metadata_props}
        where = str(p)
    else:
        raw = dict(source.get_modelmeta().custom_metadata_map)
        where = "this ONNX session"
    meta = {k[len(_META_PREFIX) :]: json.loads(v) for k, v in raw.items() if k.startswith(_META_PREFIX)}
    if meta.get("format") != ONNX_FORMAT:
        raise BadValueError(f"{where} was not written by otseg's export_onnx (no otseg.format metadata)")
    return meta


def normalise_image(rgb: np.ndarray, mean: Sequence[float] | Any, std: Sequence[float] | None = None) -> np.ndarray:
    """(H, W, 3) RGB, 0..255 (uint8 or float) -> (1, 3, H, W) float32 normalised as the model expects.

    `mean` is either the three means (with `std` the three standard deviations) or an onnxruntime session /
    metadata dict of an export, which carries both.
    """
    if std is None:
        meta = mean if isinstance(mean, Mapping) else onnx_metadata(mean)
        mean, std = meta["mean"], meta["std"]
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise BadValueError(f"expected an RGB image of shape (H, W, 3), got {arr.shape}")
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return ((arr.astype(np.float32).transpose(2, 0, 1) - m) / s)[None]


def _batch_is_dynamic(session: Any) -> bool:
    dim = session.get_inputs()[0].shape[0]
    return not isinstance(dim, int)


def onnx_slide_inference(
    session: Any,
    images: np.ndarray,
    crop: int | None = None,
    stride: int | None = None,
) -> np.ndarray:
    """The reference's sliding-window inference with an exported model: average the scores of overlapping crops.

    Args:
        session: an `onnxruntime.InferenceSession` of a file written by `export_onnx` (square input size).
        images: (B, 3, H, W) or (3, H, W) float32, normalised (see `normalise_image`); H, W >= the crop size
            (resize first: the reference resizes the short side to `test_short_side`).
        crop: crop size; default the export's input size (the only size its graph accepts).
        stride: window stride; default the model config's.

    Returns:
        (B, K, H, W) float32 scores, as `OTSeg.slide_inference` (the same windows and averaging).
    """
    meta = onnx_metadata(session)
    in_h, in_w = meta["input_size"]
    if in_h != in_w:
        raise BadValueError(f"sliding windows need a square export; this one takes {in_h}x{in_w} images")
    crop = in_h if crop is None else int(crop)
    if crop != in_h:
        raise BadValueError(f"crop {crop} differs from the export's fixed input size {in_h}; re-export with that size")
    stride = int(meta["stride"] if stride is None else stride)
    if stride < 1:
        raise BadValueError(f"stride must be >= 1, got {stride}")
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise BadValueError(f"images must have shape (B, 3, H, W) or (3, H, W), got {np.shape(images)}")
    b, _, h, w = x.shape
    if h < crop or w < crop:
        raise BadValueError(
            f"image {h}x{w} is smaller than the crop {crop}: resize it so that both sides are >= {crop} "
            f"(the reference resizes the short side to {meta.get('test_short_side')})"
        )
    name = session.get_inputs()[0].name
    groups = [x] if _batch_is_dynamic(session) else [x[i : i + 1] for i in range(b)]
    total = np.zeros((b, len(meta["class_names"]), h, w), dtype=np.float32)
    count = np.zeros((1, 1, h, w), dtype=np.float32)
    for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
        start = 0
        for group in groups:
            window = np.ascontiguousarray(group[:, :, y1:y2, x1:x2])
            scores = session.run(None, {name: window})[0]
            total[start : start + len(group), :, y1:y2, x1:x2] += scores
            start += len(group)
        count[:, :, y1:y2, x1:x2] += 1
    return total / count


def onnx_segment_image(session: Any, image: Any) -> Any:
    """Segment one image file (or PIL image / array) with an exported model: read it (EXIF, grayscale, 16-bit
    handled, the pixel cap checked), resize its short side to the export's `test_short_side`, normalise, slide the
    windows, and bring the scores back to the image's size.

    Args:
        session: an `onnxruntime.InferenceSession` of a file written by `export_onnx`.
        image: a path, PIL image or (H, W, 3) array.

    Returns:
        An `otseg.Prediction`: `labels` (H, W), `fractions()`, `overlay()`, `label_image()`, as `Predictor.predict`.
    """
    meta = onnx_metadata(session)
    rgb = read_image(image)
    short = int(meta.get("test_short_side") or meta["input_size"][0])
    resized, _ = TestResize(max(short, int(meta["input_size"][0])))(rgb, None)
    scores = onnx_slide_inference(session, normalise_image(resized, meta))
    return Prediction(torch.from_numpy(scores[0]), rgb.shape[:2], list(meta["class_names"]), rgb)


def compare_with_onnxruntime(
    model: OTSeg,
    path: str | os.PathLike,
    images: Tensor | None = None,
    *,
    batch: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Run the export with onnxruntime and the model with PyTorch on the same images; report the differences.

    Args:
        model: the model that was exported (same class set).
        path: the .onnx file.
        images: (B, 3, H, W) normalised images at the export's input size; default: `batch` random ones.

    Returns:
        {"max_abs_diff": ONNX vs PyTorch with the same fixed-iteration Sinkhorn,
         "max_abs_diff_default": ONNX vs PyTorch with its default (reference-stopping) Sinkhorn, image by image,
         "argmax_agreement": fraction of pixels whose argmax class agrees with the fixed-iteration PyTorch run,
         "argmax_agreement_default": the same against the default run}.
    """
    ort = require_module("onnxruntime", "checking the export with onnxruntime")
    meta = onnx_metadata(path)
    if meta["class_names"] != list(model.class_names):
        raise BadValueError(f"{path} was exported for classes {meta['class_names']}, the model has {model.class_names}")
    h, w = meta["input_size"]
    if images is None:
        images = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_scores = session.run(None, {meta["input_name"]: images.detach().cpu().float().numpy()})[0]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = images.to(device)
            options = exported_options(meta["sinkhorn_iters"], meta["sinkhorn_update"])
            fixed = model.encode_decode(x, options=options).cpu().numpy()
            default = torch.cat([model.encode_decode(x[i : i + 1]) for i in range(x.shape[0])]).cpu().numpy()
    finally:
        model.train(was_training)
    labels = onnx_scores.argmax(1)
    return {
        "max_abs_diff": float(np.abs(onnx_scores - fixed).max()),
        "max_abs_diff_default": float(np.abs(onnx_scores - default).max()),
        "argmax_agreement": float((labels == fixed.argmax(1)).mean()),
        "argmax_agreement_default": float((labels == default.argmax(1)).mean()),
    }
