"""Reading user images into uint8 RGB arrays: any file PIL reads, PIL images and numpy arrays.

What users hand a segmenter is rarely a clean 8-bit RGB array: phone photos carry an EXIF orientation, scans are
grayscale, screenshots have an alpha channel, microscopy and depth images are 16-bit. `read_image` turns each
into the (H, W, 3) uint8 RGB array the models take, and fails with one line that names the file otherwise.

Every image is bounded: a file whose header declares more than `max_pixels()` pixels (default 64 million, e.g.
8000x8000; set the environment variable `OTSEG_MAX_PIXELS` or pass `max_pixels=` to change it) is refused before
any pixel is decoded, so a small file that decompresses to gigabytes (a "decompression bomb") costs nothing; so is
one with a side over `MAX_SIDE` (65,535) pixels. PIL's own bomb guard (about 179 million pixels) still applies above
that. `open_image` is the one place where files are opened, for images and label maps alike.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from otseg.errors import BadValueError, MissingFileError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_FORMATS",
    "IMAGE_SUFFIXES",
    "MAX_SIDE",
    "ImageInput",
    "check_pixel_count",
    "describe_source",
    "find_images",
    "max_pixels",
    "open_image",
    "read_image",
    "to_rgb_array",
]

DEFAULT_MAX_PIXELS = 64_000_000
MAX_PIXELS_ENV = "OTSEG_MAX_PIXELS"
MAX_SIDE = 65_535  # the longest side of any image or label map (JPEG's own limit); checked with the pixel cap

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
# The PIL formats of those suffixes (JPEG includes MPO, phones' multi-picture JPEGs), whatever a file is named.
# Others are not opened: an ICO declares 16x16 in its header and may decode an embedded 13000x13000 PNG, so no
# header check could bound it.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")

ImageInput = str | os.PathLike | Image.Image | np.ndarray


def max_pixels(override: int | None = None) -> int:
    """The pixel cap in force: `override` if given, else $OTSEG_MAX_PIXELS, else `DEFAULT_MAX_PIXELS`."""
    if override is not None:
        value: Any = override
        where = "max_pixels"
    else:
        value = os.environ.get(MAX_PIXELS_ENV, "").strip() or DEFAULT_MAX_PIXELS
        where = MAX_PIXELS_ENV
    try:
        cap = int(value)
    except (TypeError, ValueError):
        raise BadValueError(f"{where}={value!r} is not a whole number of pixels (e.g. 64000000)") from None
    if cap <= 0:
        raise BadValueError(f"{where}={cap} must be a positive number of pixels (e.g. 64000000)")
    return cap


def check_pixel_count(width: int, height: int, where: str, limit: int | None = None) -> None:
    """Raise ValueError naming `where` when width x height exceeds the pixel cap, or a side exceeds `MAX_SIDE`."""
    if max(width, height) > MAX_SIDE:
        raise BadValueError(
            f"{where} is {width}x{height}: a side over the limit of {MAX_SIDE:,} pixels; crop or shrink it"
        )
    cap = max_pixels(limit)
    if width * height > cap:
        raise BadValueError(
            f"{where} is {width}x{height} = {width * height / 1e6:.1f} million pixels, over the limit of "
            f"{cap / 1e6:.1f} million: shrink it, or raise the limit with {MAX_PIXELS_ENV}=N (max_pixels=N in Python)"
        )


@contextlib.contextmanager
def open_image(path: str | os.PathLike, what: str = "image", limit: int | None = None) -> Iterator[Image.Image]:
    """`PIL.Image.open(path)` with the pixel cap checked on the header, before anything is decoded, and every
    decoding failure (corrupt, truncated, not an image, a bomb) turned into one ValueError naming the file.

    Decode inside the `with` block (`im.load()`); the errors of that step are translated too.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is too large, or not a readable image.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"{what} {p} does not exist")
    try:
        with warnings.catch_warnings():
            # Our own cap (checked below) is the one that decides; PIL's warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise BadValueError(f"{what} {p} is too large to decode safely: {' '.join(str(e).split())}") from None
    except UnidentifiedImageError:
        raise BadValueError(
            f"{what} {p} is not an image file otseg reads (corrupt, or not PNG, JPEG, BMP, TIFF, WebP, GIF or PPM)"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:  # ValueError: PIL's text-chunk bomb guard, among others
        raise BadValueError(f"{what} {p} is corrupt or truncated: {' '.join(str(e).split())}") from None
    try:
        with im:
            check_pixel_count(im.width, im.height, f"{what} {p}", limit)
            yield im
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:  # PIL's decode errors
        raise BadValueError(f"{what} {p} is corrupt or truncated: {' '.join(str(e).split())}") from None


def describe_source(image: Any) -> str:
    """A short name of an image input for messages: the path, or the kind and size of an in-memory image."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, Image.Image):
        return f"PIL image {image.mode} {image.width}x{image.height}"
    if isinstance(image, np.ndarray):
        return f"array {image.dtype} {tuple(image.shape)}"
    return type(image).__name__


_STRIP_PIXELS = 4 << 20  # pixels converted at a time: the float64 temporaries of a strip stay about 100 MB


def _strips(height: int, width: int) -> range:
    """Row starts of strips of about `_STRIP_PIXELS` pixels."""
    return range(0, height, max(1, _STRIP_PIXELS // max(1, width)))


def _uint8_converter(values: np.ndarray, where: str) -> Callable[[np.ndarray], np.ndarray]:
    """Check integer or float pixels over the whole image and return the conversion of any part of it to uint8.
    16-bit integers are divided by 257 (65535 -> 255); floats are taken as 0..1 when the image's maximum is at most
    1, else as 0..255. The conversion is applied a strip at a time, so its float64 temporaries stay small."""
    if values.dtype == np.uint8:
        return lambda part: part
    if values.dtype == np.bool_:
        return lambda part: part.astype(np.uint8) * 255
    if np.issubdtype(values.dtype, np.integer):
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise BadValueError(
                f"{where}: integer pixel values span {values.min()}..{values.max()}; expected 0..255 (8-bit) or "
                "0..65535 (16-bit)"
            )
        if values.size and values.max() <= 255 and values.dtype.itemsize == 1:
            return lambda part: part.astype(np.uint8)
        # 16-bit data: full-range scaling, as image viewers show it.
        return lambda part: np.rint(part.astype(np.float64) / 257.0).astype(np.uint8)
    if np.issubdtype(values.dtype, np.floating):
        rows = _strips(values.shape[0], int(np.prod(values.shape[1:], dtype=np.int64)))
        if not all(np.isfinite(values[top : top + rows.step]).all() for top in rows):
            raise BadValueError(f"{where}: the image holds NaN or infinite values")
        scale = 255.0 if values.size == 0 or float(values.max()) <= 1.0 else 1.0
        return lambda part: np.clip(np.rint(part.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    raise BadValueError(f"{where}: unsupported pixel type {values.dtype}; give uint8, uint16 or float pixels")


def _rgb_pixels(image: Image.Image) -> np.ndarray:
    """An RGB PIL image's pixels as a new (H, W, 3) uint8 array, copied a strip of rows at a time: `np.asarray`
    of the whole image would first build a bytes copy of it (192 MB more for 64 megapixels)."""
    out = np.empty((image.height, image.width, 3), dtype=np.uint8)
    rows = max(1, (16 << 20) // max(1, 3 * image.width))
    for top in range(0, image.height, rows):
        bottom = min(image.height, top + rows)
        out[top:bottom] = np.asarray(image.crop((0, top, image.width, bottom)), dtype=np.uint8)
    return out


def to_rgb_array(image: Image.Image | np.ndarray, where: str = "image") -> np.ndarray:
    """A PIL image or an array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> (H, W, 3) uint8 RGB.

    Alpha is dropped (the colour channels are kept as stored), grayscale is repeated over three channels, 16-bit
    values are scaled to 8 bits. A PIL image's EXIF orientation is NOT applied here (`read_image` does it).
    """
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            # PIL's convert("RGB") clips these to 0..255 instead of scaling; scale them ourselves.
            arr = np.asarray(image)
            if image.mode == "I" and arr.size and arr.max() <= 255:
                arr = arr.astype(np.uint8)
            elif image.mode != "F":
                arr = arr.astype(np.uint16 if arr.size == 0 or arr.max() <= 65535 else np.int64)
            return to_rgb_array(arr, where)
        if image.mode != "RGB":
            image = image.convert("RGBA").convert("RGB") if image.mode == "P" else image.convert("RGB")
        return _rgb_pixels(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a file path, a PIL image or a numpy array, got {type(image).__name__}")
    arr = image
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise BadValueError(
            f"{where}: expected an image array of shape (H, W), (H, W, 3) or (H, W, 4), got {tuple(image.shape)} "
            "(channels-first arrays need .transpose(1, 2, 0))"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadValueError(f"{where}: the image is empty ({tuple(image.shape)})")
    convert = _uint8_converter(arr, where)
    if arr.dtype == np.uint8 and arr.ndim == 3:
        return np.ascontiguousarray(arr)
    # Converted a strip at a time, grey repeated over three channels as it is written: 16-bit or float pixels
    # never exist as a (H, W, 3) float64 array (24 bytes a pixel, times the temporaries).
    height, width = arr.shape[:2]
    out = np.empty((height, width, 3), np.uint8)
    rows = _strips(height, width)
    for top in rows:
        part = convert(arr[top : top + rows.step])
        out[top : top + rows.step] = part[..., None] if part.ndim == 2 else part
    return out


def read_image(image: ImageInput, max_pixels: int | None = None) -> np.ndarray:
    """Any image input -> (H, W, 3) uint8 RGB, upright (EXIF orientation applied for files and PIL images).

    Args:
        image: a file path, a PIL image or a numpy array.
        max_pixels: the pixel cap (default: $OTSEG_MAX_PIXELS or `DEFAULT_MAX_PIXELS`), checked before decoding.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a readable image (corrupt, truncated, not an image) or has more pixels than
            the cap, naming the file.
    """
    if isinstance(image, (str, os.PathLike)):
        with open_image(image, "image", max_pixels) as im:
            im.load()  # decode now: a truncated file fails here, inside open_image, with its name
            ImageOps.exif_transpose(im, in_place=True)  # our own image: no copy of it
            return to_rgb_array(im, str(image))
    where = describe_source(image)
    if isinstance(image, Image.Image):
        check_pixel_count(image.width, image.height, where, max_pixels)
        return to_rgb_array(ImageOps.exif_transpose(image), where)
    if isinstance(image, np.ndarray) and image.ndim >= 2:
        check_pixel_count(int(image.shape[1]), int(image.shape[0]), where, max_pixels)
    return to_rgb_array(image, where)


def find_images(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into image paths; a missing input is an error."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise MissingFileError(f"{p} does not exist (give image files or folders of images)")
    if not found:
        where = ", ".join(str(i) for i in inputs)
        raise BadValueError(f"no images found in {where} (suffixes: {', '.join(IMAGE_SUFFIXES)})")
    return found
