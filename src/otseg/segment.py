"""`otseg segment`: run a `Predictor` over image files and folders and write what a user looks at.

For each image `<stem>`:

* `<stem>_labels.png`: the label map as a palette PNG (pixel value = index into the class list; viewers show
  colours);
* `<stem>_overlay.png`: the colour label map over the image, with a legend of the classes found;
* `<stem>.json`: the class list, the image size and each class's share of the pixels.

`summary.json` lists every image with its outputs, and the images that could not be segmented (with the reason).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from otseg.data.classes import class_list_note, parse_class_option
from otseg.errors import BadValueError
from otseg.image_io import find_images
from otseg.predictor import Predictor
from otseg.utils import atomic_write, atomic_write_text

__all__ = ["is_segment_output", "output_stems", "parse_class_list", "segment_images"]

SUMMARY_STEM = "summary"
_OUTPUT_SUFFIXES = ("_labels.png", "_overlay.png")
_MAX_RECORD_BYTES = 1 << 20  # an image's record is a few hundred bytes (a few KB with hundreds of classes)


def parse_class_list(text: str) -> list[str]:
    """--classes: 'cat, sofa,wall' -> ['cat', 'sofa', 'wall'], or the names in a .txt file (one per line).

    The one class-list parser (`otseg.data.classes.parse_class_option`): empty, over-long and repeated names,
    other syntaxes ('a; b', '["a", "b"]') and a .txt file that does not exist are errors naming the option or
    the file.
    """
    return parse_class_option(text, "--classes")


def output_stems(paths: Sequence[Path]) -> list[str]:
    """Output names for the images: their stems, made unique with the parent folder (or a counter) on clashes.

    The stem "summary" is never given to an image ("summary.png" becomes "summary_2"): its `<stem>.json` would be
    the run's `summary.json`.
    """
    stems = [p.stem for p in paths]
    out: list[str] = []
    used = {SUMMARY_STEM}
    for p, stem in zip(paths, stems, strict=True):
        name = stem if stems.count(stem) == 1 else f"{p.parent.name}_{stem}"
        base, n = name, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        out.append(name)
    return out


def is_segment_output(path: Path) -> bool:
    """Whether `path` is a picture an earlier `otseg segment` wrote: `<stem>_labels.png` or `<stem>_overlay.png`
    whose `<stem>.json` beside it records it. Such files are not segmented again (when --out is, or lies inside,
    an input folder, a second run would otherwise segment its own outputs)."""
    name = path.name
    suffix = next((s for s in _OUTPUT_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        return False
    record_file = path.with_name(f"{name[: -len(suffix)]}.json")
    try:
        if record_file.stat().st_size > _MAX_RECORD_BYTES:
            return False
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False  # no readable record beside it: the user's own picture
    return isinstance(record, dict) and name in (record.get("labels"), record.get("overlay"))


def _save_png(image: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def segment_images(
    predictor: Predictor,
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment every image and write its outputs; returns the summary (also written to `summary.json`).

    The class list is checked once, before any image (ValueError). An image that cannot be read, or is over
    the pixel cap (`otseg.image_io.max_pixels`), is reported (its name and why) and skipped; the others and
    `summary.json` are still written.
    """
    out = Path(out_dir)
    found = find_images(list(images))
    paths = [p for p in found if not is_segment_output(p)]
    if len(paths) < len(found):
        print(f"skipped {len(found) - len(paths)} label map(s) and overlay(s) written by an earlier otseg segment")
    if not paths:
        raise BadValueError(
            f"no images to segment: the only images in {', '.join(str(i) for i in images)} are the outputs of an "
            "earlier otseg segment (<stem>_labels.png, <stem>_overlay.png); give the original images"
        )
    # The class list is checked (and embedded) once, before the image loop: a bad list is one error, not one
    # per image.
    names = predictor.prepare_classes(class_names)
    out.mkdir(parents=True, exist_ok=True)
    note = predictor.vocabulary_note(names)
    if predictor.claim_vocabulary_note(names) is not None:  # said here once, not again by every predict
        print(f"note: {note}", flush=True)
    list_note = class_list_note(names)
    if list_note is not None:
        print(f"note: {list_note}", flush=True)
    done: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    bar = tqdm(list(zip(paths, output_stems(paths), strict=True)), desc="segment", unit="image", disable=not progress)
    for path, stem in bar:
        label_file, overlay_file, json_file = (out / f"{stem}{s}" for s in ("_labels.png", "_overlay.png", ".json"))
        try:
            result = predictor.predict(path, names)
            # The pictures are built here too: an image at the pixel cap may be segmented and its overlay still
            # not fit in memory. They are written below (a write error, e.g. a full disk, stops the run).
            label_image, overlay_image = result.label_image(), result.overlay()
        except (ValueError, OSError, MemoryError) as e:  # a bad or too large file: say which, go on with the rest
            reason = str(e)
            if isinstance(e, MemoryError):  # the image was read; segmenting it at this size needed more memory
                reason = (
                    f"not enough memory to segment {path} with {len(names)} classes; shrink the image, name fewer "
                    "classes, or lower the pixel cap (OTSEG_MAX_PIXELS)"
                )
            failed.append({"image": str(path), "error": reason})
            bar.write(f"skipped {path}: {reason}")
            continue
        names = result.class_names
        _save_png(label_image, label_file)
        _save_png(overlay_image, overlay_file)
        fractions = result.fractions()
        record = {
            "image": str(path),
            "height": int(result.labels.shape[0]),
            "width": int(result.labels.shape[1]),
            "class_names": result.class_names,
            "fractions": {k: round(v, 6) for k, v in fractions.items()},
            "labels": label_file.name,
            "overlay": overlay_file.name,
        }
        atomic_write_text(json_file, json.dumps(record, indent=2) + "\n")
        done.append({**record, "json": json_file.name})
    summary = {"class_names": names, "images": done, "failed": failed}
    if note is not None:
        summary["note"] = note
    if list_note is not None:
        summary["class_list_note"] = list_note
    atomic_write_text(out / f"{SUMMARY_STEM}.json", json.dumps(summary, indent=2) + "\n")
    return summary
