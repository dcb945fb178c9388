"""`Predictor`: segment any image with any list of class names.

    >>> from otseg import Predictor
    >>> predictor = Predictor.from_pretrained("demo")            # or a folder, an iter_N.pt, a reference .pth
    >>> result = predictor.predict("photo.jpg", ["red striped", "blue dotted"])
    >>> result.labels.shape, result.scores.shape                  # (H, W) and (K, H, W) at the image's own size
    >>> result.fractions()                                        # {"red striped": 0.12, ...}

Images may be a path, a PIL image or a numpy array of any size, grayscale, RGB, RGBA or 16-bit; files are turned
upright by their EXIF orientation. The model sees the image resized to its test size (short side
`config.test_short_side`) with sliding windows, as in the reference evaluation; scores come back at the input's
size. Class text embeddings are cached per list of names, so repeated calls with the same names cost nothing.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from otseg.config import resolve_templates
from otseg.data.facts import data_config_for
from otseg.data.transforms import TestTransform
from otseg.errors import BadValueError, MissingFileError
from otseg.image_io import ImageInput, describe_source, read_image
from otseg.model.build import attach_clip_text_tower
from otseg.model.inference_options import InferenceOptions
from otseg.model.labels import upsampled_argmax
from otseg.model.precision import Precision, check_precision, precision_note
from otseg.model.presets import get_preset, list_presets
from otseg.model.segmentor import OTSeg
from otseg.model.text import compute_class_embeddings, validate_class_names
from otseg.model_files.open_model import load_model
from otseg.model_files.otseg_folder import saved_class_names
from otseg.named_models import NAMED_MODELS
from otseg.viz import overlay_with_legend, palette_label_image

__all__ = ["Prediction", "Predictor"]

_EMBEDDING_CACHE_SIZE = 32


# The longest side the model may be asked to slide over, in multiples of its test short side (a 2000x1 image
# would otherwise become 512 x 1,024,000 pixels: thousands of windows).
MAX_ASPECT_RATIO = 16


class Prediction:
    """The result of `Predictor.predict` for one image.

    Attributes:
        labels: (H, W) int64 index into `class_names` of each pixel's best class, at the input image's size.
        class_names: the K names.
        image: (H, W, 3) uint8 RGB image as the model saw it (upright), for drawing.
        low_res_scores: (K, h, w) float32 scores at the resolution the model ran at.
        seen_mask: (K,) bool, the classes the model treats as seen in training (they get the seen-class bias
            where the model applies it); None when unknown.

    `scores` (K, H, W) at the image's own size is built on first access (K x H x W floats); the label map is
    built without it, a few channels at a time (`otseg.model.labels.upsampled_argmax`, the evaluation uses the same
    resize-and-argmax), so memory stays bounded for large images.
    """

    def __init__(
        self,
        low_res_scores: Tensor,
        size: tuple[int, int],
        class_names: list[str],
        image: np.ndarray,
        seen_mask: np.ndarray | None = None,
        note: str | None = None,
    ):
        self.low_res_scores = low_res_scores.float().cpu()
        self.size = (int(size[0]), int(size[1]))
        self.class_names = class_names
        self.image = image
        self.seen_mask = seen_mask
        self.note = note  # set when a class name has words the model never learnt (`Predictor.vocabulary_note`)
        self.labels = np.asarray(upsampled_argmax(self.low_res_scores, self.size).numpy(), dtype=np.int64)  # no copy
        self._scores: np.ndarray | None = None

    @property
    def scores(self) -> np.ndarray:
        """(K, H, W) float32 class scores (sigmoid probabilities minus the seen-class bias, as the reference
        scores them) at the input image's size; `labels` is their argmax over K."""
        if self._scores is None:
            low = self.low_res_scores
            if tuple(low.shape[-2:]) == self.size:
                self._scores = low.numpy()
            else:
                self._scores = F.interpolate(low[None], size=self.size, mode="bilinear", align_corners=False)[0].numpy()
        return self._scores

    def fractions(self) -> dict[str, float]:
        """Share of the image's pixels assigned to each class (all K names, summing to 1)."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        total = max(int(self.labels.size), 1)
        return {name: float(c) / total for name, c in zip(self.class_names, counts, strict=True)}

    def overlay(self, alpha: float = 0.5, legend: bool = True) -> Any:
        """A PIL image: the colour label map blended over the image, with a legend of the classes present."""
        return overlay_with_legend(self.image, self.labels, self.class_names, alpha=alpha, legend=legend)

    def label_image(self) -> Any:
        """The label map as a palette ("P" mode) PIL image: pixel value = class index, colours from `otseg.viz`."""
        return palette_label_image(self.labels, len(self.class_names), self.class_names)


class Predictor:
    """Segment images with an OTSeg model for any class names its text tower can embed.

    Args:
        model: an `OTSeg` model. To name new classes it needs its CLIP text tower (`model.text_encoder`);
            without one, only the class set it already holds can be used.
        device: where to run ("cpu", "cuda", ...); default: the model's device.
        templates: prompt templates for new class names; default: the model config's templates.
        vocabulary: every word the model's text tower has learnt, for models that know a small world only (the
            built-in "demo" model lists its own in its config.json); class names with other words get a note.
            None: no check (a real CLIP's text tower has read the web).
        max_pixels: the largest image accepted, in pixels (default: $OTSEG_MAX_PIXELS or 64 million); larger
            files are refused from their header, before decoding. Images whose sides differ by more than
            `MAX_ASPECT_RATIO` times are refused too (they would need thousands of sliding windows).
        precision: "float32" (default) or "bf16": the image tower under bfloat16 autocast, faster only where the
            hardware computes in bfloat16 (recent GPUs, CPUs with AVX512-BF16 or AMX; a warning says when this
            CPU has none); the decode head, its Sinkhorn and the scores stay float32 (`otseg.model.precision`;
            docs/speed.md gives the speed and the agreement with float32).
        options: the test-time settings of every `predict` (`InferenceOptions`: ensemble weight, seen bias,
            Sinkhorn modes); None: the model config's.

    `predict` never changes the model: the class set of a call is passed to the model, not stored in it.
    """

    def __init__(
        self,
        model: OTSeg,
        device: str | torch.device | None = None,
        templates: Sequence[str] | None = None,
        vocabulary: Iterable[str] | None = None,
        max_pixels: int | None = None,
        precision: Precision = "float32",
        options: InferenceOptions | None = None,
    ):
        if not isinstance(model, OTSeg):
            raise TypeError(f"Predictor needs an otseg.OTSeg model, got {type(model).__name__}")
        if options is not None and not isinstance(options, InferenceOptions):
            raise TypeError(f"Predictor options must be an otseg InferenceOptions, got {type(options).__name__}")
        self._precision = check_precision(precision)
        self.options = options
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        note = precision_note(self._precision, self.device)
        if note is not None:
            warnings.warn(note, UserWarning, stacklevel=2)
        self.templates = tuple(templates) if templates is not None else None
        self.vocabulary = frozenset(w.lower() for w in vocabulary) if vocabulary is not None else None
        self._noted: set[tuple[str, ...]] = set()
        self.max_pixels = max_pixels
        self._embeddings: OrderedDict[tuple[str, ...], Tensor] = OrderedDict()
        if model.has_class_embeddings:  # the classes the model came with need no text tower
            self._embeddings[tuple(model.class_names)] = model.class_embeddings.detach().clone()
        self._default_names = list(model.class_names) if model.has_class_embeddings else list(model.config.class_names)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        clip: str | os.PathLike | None = None,
        preset: str | None = None,
        allow_pickle: bool = False,
        progress: bool = True,
        overrides: dict[str, Any] | None = None,
        trust_unverified: bool = False,
        precision: Precision = "float32",
        options: InferenceOptions | None = None,
    ) -> Predictor:
        """Load a predictor.

        Args:
            name_or_path: "demo" (the built-in miniature model, a model folder shipped with otseg), a folder
                written by `save_pretrained`/`otseg convert`, a training checkpoint `iter_N.pt`, or a reference
                release `.pth` (needs `preset`).
            clip: OpenAI CLIP weights (e.g. ViT-B-16.pt) for the text tower, when the file holds none (training
                checkpoints and reference releases do not); needed to name new classes.
            preset: the preset a reference `.pth` was trained with (e.g. "voc12-inductive").
            allow_pickle: allow pickled objects in old checkpoint files (only for files you trust).
            progress: unused, kept for callers that pass it: the named models ship ready, nothing is built.
            overrides: inference settings of the model's config, e.g. {"stride": 256} (or, for a reference
                `.pth`, any preset field, as `otseg eval --set` takes them).
            precision: "float32" (default) or "bf16" (see the class docstring).
            options: test-time settings of every `predict` (see the class docstring).
            trust_unverified: accept an otseg folder or `iter_N.pt` that carries no SHA-256 of its tensors
                (refused by default: otseg writes one into every file; see `otseg.model_files.otseg_folder`).
        """
        precision = check_precision(precision)  # before the model is read: a typo costs no load
        if preset is not None:
            # A typo is refused here, with the list of presets, also where the file names its own config and
            # the preset would not be read.
            get_preset(preset)
        if str(name_or_path) in NAMED_MODELS:
            name_or_path = NAMED_MODELS[str(name_or_path)].path
        elif not Path(name_or_path).exists():
            where = str(name_or_path)
            files = (
                "a folder from otseg convert / save_pretrained, an iter_N.pt from otseg train, or a reference .pth "
                "(with its preset)"
            )
            if os.sep in where or Path(where).suffix:  # meant as a file
                raise MissingFileError(f"checkpoint {where} does not exist; give {files}")
            raise MissingFileError(
                f"no model {where!r}: the built-in models are {', '.join(NAMED_MODELS)}; otherwise give {files}"
            )
        model = load_model(
            name_or_path,
            preset=preset,
            overrides=overrides,
            allow_pickle=allow_pickle,
            trust_unverified=trust_unverified,
        )
        if clip is not None:  # the text tower only: the file's backbone (trained prompts) stays as loaded
            attach_clip_text_tower(model, clip)
        vocabulary = None if clip is not None else _saved_vocabulary(name_or_path)
        return cls(model, device=device, vocabulary=vocabulary, precision=precision, options=options)

    # ------------------------------------------------------------------ classes
    @property
    def default_class_names(self) -> list[str]:
        """The class names the model was trained or configured with (used when `predict` gets none)."""
        return list(self._default_names)

    @property
    def precision(self) -> Precision:
        """ "float32" or "bf16": the precision `predict` runs the image tower in (set at construction)."""
        return self._precision

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare_classes(self, class_names: Sequence[str] | None) -> list[str]:
        """Check (and embed) a class list once, e.g. before a loop over images: the validated names.

        Raises:
            ValueError: an empty or repeated name, a name too long for the text tower, or new names for a
                model without a text tower.
        """
        return self._classes_for(class_names)[0]

    def _classes_for(self, class_names: Sequence[str] | None) -> tuple[list[str], tuple[Tensor, Tensor]]:
        """(names, (embeddings (K, N, D), seen mask (K,))) for a class list; the model itself is not changed."""
        names = validate_class_names(self._default_names if class_names is None else class_names)
        key = tuple(names)
        if key == tuple(self.model.class_names) and self.model.has_class_embeddings:
            return names, (self.model.class_embeddings, self.model.seen_mask)
        emb = self._embeddings.get(key)
        if emb is None:
            if self.model.text_encoder is None:
                raise BadValueError(
                    f"this model has no CLIP text tower, so it can only segment its own classes "
                    f"({', '.join(self._default_names[:8])}{', ...' if len(self._default_names) > 8 else ''}); "
                    "load it with clip=PATH (--clip on the command line) to name other classes"
                )
            templates = resolve_templates(self.templates or self.model.config.templates)
            with torch.no_grad():
                emb = compute_class_embeddings(self.model.text_encoder, names, templates)
            self._embeddings[key] = emb
            while len(self._embeddings) > _EMBEDDING_CACHE_SIZE:
                self._embeddings.popitem(last=False)
        self._embeddings.move_to_end(key)
        device = self.model.class_embeddings.device
        seen = self.model._seen_mask_for(names, None).to(device)
        return names, (emb.to(device=device, dtype=torch.float32), seen)

    def vocabulary_note(self, class_names: Sequence[str] | None = None) -> str | None:
        """A one-line note when class names use words outside the model's `vocabulary` (None when all are known,
        or when the model declares no vocabulary): which words, and what the model knows."""
        if self.vocabulary is None:
            return None
        names = self._default_names if class_names is None else class_names
        unknown = sorted({w for name in names for w in _words(name)} - self.vocabulary)
        if not unknown:
            return None
        return (
            f"this model knows only the words of its training world ({', '.join(sorted(self.vocabulary))}); "
            f"{', '.join(repr(w) for w in unknown)} {'is' if len(unknown) == 1 else 'are'} new to it, so the scores "
            "of classes named with them carry no knowledge of what the words mean"
        )

    def claim_vocabulary_note(self, class_names: Sequence[str]) -> str | None:
        """`vocabulary_note` the first time it is asked for this class list, None afterwards: whoever shows the
        note to the user (`predict` as a warning, `otseg segment` before its image loop) says it once."""
        key = tuple(class_names)
        note = self.vocabulary_note(class_names)
        if note is None or key in self._noted:
            return None
        self._noted.add(key)
        return note

    # ------------------------------------------------------------------ prediction
    def preprocess(self, image: np.ndarray) -> Tensor:
        """(H, W, 3) uint8 RGB -> (1, 3, h, w) normalised tensor at the model's test size (short side)."""
        cfg = self.model.config
        h, w = image.shape[:2]
        if max(h, w) > MAX_ASPECT_RATIO * min(h, w):
            raise BadValueError(
                f"the image is {w}x{h}: its sides differ by more than {MAX_ASPECT_RATIO}x, and the model, which "
                f"resizes the short side to {cfg.test_short_side} px, would slide over a strip "
                f"{max(h, w) * cfg.test_short_side // min(h, w)} px long; crop it into parts first"
            )
        # The evaluation's own test pipeline (resize, normalisation), so that a picture scores here as it does there.
        x, _ = TestTransform(data_config_for(cfg))(image)
        return x[None].to(self.device)

    @torch.no_grad()
    def predict(self, image: ImageInput, class_names: Sequence[str] | None = None) -> Prediction:
        """Segment one image.

        Args:
            image: a file path, PIL image or numpy array (H, W), (H, W, 3) or (H, W, 4); uint8, uint16 or float.
            class_names: what to look for, e.g. ["cat", "sofa", "wall"]; default: `default_class_names`.

        Returns:
            A `Prediction` with labels (H, W) and scores (K, H, W) at the image's own (upright) size.
        """
        names, classes = self._classes_for(class_names)
        note = self.vocabulary_note(names)
        first = self.claim_vocabulary_note(names)
        if first is not None:
            warnings.warn(first, UserWarning, stacklevel=2)
        rgb = read_image(image, max_pixels=self.max_pixels)
        where = describe_source(image)
        try:
            scores = self.model.predict_scores(
                self.preprocess(rgb), classes=classes, precision=self._precision, options=self.options
            )
            seen = classes[1].cpu().numpy().astype(bool)
            return Prediction(scores[0], rgb.shape[:2], names, rgb, seen_mask=seen, note=note)
        except ValueError as e:
            raise BadValueError(f"{where}: {e}") from None
        except (MemoryError, RuntimeError) as e:
            # The image was read; what ran out is segmenting it (torch reports a failed allocation as a
            # RuntimeError): say so, rather than let it pass for an unreadable file.
            if not isinstance(e, MemoryError) and not _is_out_of_memory(e):
                raise
            h, w = rgb.shape[:2]
            raise MemoryError(
                f"{where}: out of memory segmenting this {w}x{h} image for {len(names)} classes on {self.device} "
                f"(the image itself was read): segment a smaller copy, fewer classes at a time, or lower the pixel "
                "cap (OTSEG_MAX_PIXELS, max_pixels=)"
            ) from None

    def __repr__(self) -> str:
        cfg = self.model.config
        return (
            f"Predictor(model={cfg.name!r}, classes={len(self._default_names)}, device={self.device}, "
            f"text_tower={'yes' if self.model.text_encoder is not None else 'no'}"
            + (f", precision={self._precision!r})" if self._precision != "float32" else ")")
        )


def _is_out_of_memory(error: BaseException) -> bool:
    """Whether a RuntimeError is torch's report of a failed allocation (CPU or CUDA)."""
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def _words(name: str) -> list[str]:
    return re.findall(r"[a-z]+", name.lower())


def _saved_vocabulary(path: str | os.PathLike) -> list[str] | None:
    """The `vocabulary` a model folder's config.json declares, if any."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        vocabulary = json.loads(config.read_text(encoding="utf-8")).get("vocabulary")
    except (OSError, ValueError, AttributeError):
        return None  # load_model has read this file already: a problem here only means no vocabulary check
    if isinstance(vocabulary, list) and all(isinstance(w, str) for w in vocabulary):
        return vocabulary
    return None


def default_class_names(name_or_path: str | os.PathLike, preset: str | None = None) -> list[str]:
    """Class names of a model without building it when that is cheap: a named model ("demo"), a preset name, or a
    model file."""
    if str(name_or_path) in NAMED_MODELS:
        return list(NAMED_MODELS[str(name_or_path)].class_names)
    if str(name_or_path) in list_presets():
        return list(get_preset(str(name_or_path)).class_names)
    p = Path(name_or_path)
    if p.is_dir() and (p / "config.json").is_file():
        return saved_class_names(p)  # bounded and checked as when the model is loaded
    return Predictor.from_pretrained(p, preset=preset).default_class_names
