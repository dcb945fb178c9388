"""Reading one training or evaluation sample's files: the image (through the one image reader) and the label map
(class indices, palette PNGs read as indices), with the label's values checked against the class count. Every
failure is one message naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from otseg import image_io
from otseg.errors import BadFileError, BadValueError, MissingFileError

__all__ = ["check_label_values", "one_line", "read_image", "read_label"]


def one_line(exc: BaseException) -> str:
    """`exc`'s message on one line (decoder messages occasionally span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to a uint8 `(H, W, 3)` RGB array (EXIF orientation applied, as OpenCV's imread),
    through the one image reader, `otseg.image_io.read_image` (pixel cap included).

    Raises:
        FileNotFoundError: the file does not exist.
        OSError: the file cannot be decoded (corrupt, truncated, not an image, or over the pixel cap); the
            message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"image file {path} does not exist")
    try:
        return image_io.read_image(path)
    except ValueError as exc:
        raise BadFileError(f"cannot read image {path}: {one_line(exc)}") from None


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map as class indices: a `(H, W)` integer array (uint8 for 8-bit PNGs).

    Palette (mode P) PNGs are read as their palette *indices*, never as colours.

    Raises:
        FileNotFoundError: the file does not exist.
        OSError: the file cannot be decoded.
        ValueError: the file is not a single-channel index map (e.g. an RGB colour-coded mask).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"label file {path} does not exist")
    try:
        with image_io.open_image(path, "label") as im:
            im.load()
            mode = im.mode
            if mode in ("P", "L"):
                return np.array(im, dtype=np.uint8)
            if mode == "1":
                return np.array(im).astype(np.uint8)
            if mode.startswith("I"):  # 16/32-bit greyscale: values are checked against K by the dataset
                return np.array(im).astype(np.int64)
    except ValueError as exc:
        raise BadFileError(
            f"cannot read label {path}: {one_line(exc)} (corrupt, truncated or unreadable file)"
        ) from None
    raise BadValueError(
        f"label {path} is a mode-{mode} image; expected a single-channel index map (PNG mode L or P) holding "
        "class ids, not a colour-coded mask"
    )


def check_label_values(label: np.ndarray, num_classes: int, ignore_index: int, path: Path, reduced: bool) -> None:
    """Raise ValueError naming `path` if any value is neither in 0..num_classes-1 nor `ignore_index`."""
    # bincount over the 256 possible uint8 values is ~10x faster than np.unique on a full-size map.
    uint8 = label.dtype == np.uint8
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=256)) if uint8 else np.unique(label)
    bad = [int(v) for v in present if not (0 <= v < num_classes or v == ignore_index)]
    if bad:
        raw = f" (raw value{'s' if len(bad) > 1 else ''} {[b + 1 for b in bad]} before reduce_zero_label)"
        raise BadValueError(
            f"label {path} contains value{'s' if len(bad) > 1 else ''} {bad}{raw if reduced else ''}: "
            f"valid ids are 0..{num_classes - 1} and the ignore index {ignore_index}"
        )
