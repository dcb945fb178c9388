"""Pictures of results: colour palettes, overlays, side-by-side panels with a legend (PIL only).

Class colours come from the names where they can: a class whose name holds a colour word ("red striped", "dark
blue car") is drawn in that colour (several classes with the same word get lighter and darker shades of it);
the others get distinct golden-ratio hues by their index.
"""

from __future__ import annotations

import colorsys
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from otseg.errors import BadValueError

__all__ = [
    "COLOUR_WORDS",
    "class_colours",
    "colorize",
    "label_font",
    "label_map_panel",
    "overlay",
    "overlay_with_legend",
    "palette",
    "palette_label_image",
]

IGNORE_COLOR = (0, 0, 0)
# Colour words in class names and the RGB each is drawn in.
COLOUR_WORDS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 225), "yellow": (240, 210, 40),
    "orange": (245, 140, 30), "purple": (140, 60, 180), "violet": (150, 80, 220), "pink": (245, 130, 180),
    "brown": (140, 90, 50), "black": (35, 35, 35), "white": (240, 240, 240), "gray": (128, 128, 128),
    "grey": (128, 128, 128), "cyan": (40, 200, 210), "magenta": (210, 50, 180), "gold": (212, 175, 55),
    "silver": (190, 190, 200), "beige": (225, 210, 170), "turquoise": (64, 224, 208),
}  # fmt: skip
ClassesOrCount = int | Sequence[str]
_SHADES = (0.0, 0.4, -0.4, 0.65, -0.6)  # towards white (> 0) or black (< 0) for repeated colour words
# Pillow's default font at its default 10 px rounds some spaces to nothing ("yellow dotted" drew as
# "yellowdotted"); at 12 px every space keeps its width.
_FONT_SIZE = 12


def palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """(num_classes, 3) uint8 distinct colours (golden-ratio hues, fixed saturation/value pattern)."""
    colors = []
    for i in range(num_classes):
        hue = (i * 0.618033988749895 + 0.1 * seed) % 1.0
        sat = 0.65 + 0.3 * ((i // 7) % 2)
        val = 0.95 - 0.25 * ((i // 3) % 2)
        colors.append([round(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val)])
    return np.asarray(colors, dtype=np.uint8).reshape(-1, 3)


def class_colours(classes: ClassesOrCount) -> np.ndarray:
    """(K, 3) uint8 colours of K classes: a name's colour word gives its colour, the rest `palette` hues.

    Args:
        classes: the class names, or only their number (then every class gets its `palette` hue).
    """
    if isinstance(classes, int):
        return palette(classes)
    names = list(classes)
    colours = palette(len(names))
    uses: dict[str, int] = {}
    for i, name in enumerate(names):
        word = next((w for w in re.findall(r"[a-z]+", name.lower()) if w in COLOUR_WORDS), None)
        if word is None:
            continue
        n = uses.get(word, 0)
        uses[word] = n + 1
        shade = _SHADES[n % len(_SHADES)]  # the 1st use: the colour itself; then lighter and darker shades
        base = np.asarray(COLOUR_WORDS[word], dtype=np.float64)
        mixed = base + shade * (255.0 - base) if shade > 0 else base * (1.0 + shade)
        colours[i] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return colours


def _count(classes: ClassesOrCount) -> int:
    return classes if isinstance(classes, int) else len(classes)


def _colour_lut(classes: ClassesOrCount) -> np.ndarray:
    num_classes = _count(classes)
    lut = np.zeros((max(256, num_classes), 3), np.uint8)
    lut[:num_classes] = class_colours(classes)
    if num_classes <= 255:
        lut[255] = IGNORE_COLOR
    return lut


def colorize(labels: np.ndarray, classes: ClassesOrCount) -> np.ndarray:
    """Label map (H, W) with values 0..K-1 -> RGB (H, W, 3) uint8 (`classes`: the names, or their number). With
    at most 255 classes the value 255 is the ignore index (drawn black); with more, every value is a class."""
    lut = _colour_lut(classes)
    return lut[labels.astype(np.int64).clip(0, len(lut) - 1)]


_STRIP_PIXELS = 4 << 20  # pixels blended at a time: a strip's float32 temporaries stay about 50 MB each


def overlay(image: np.ndarray, labels: np.ndarray, classes: ClassesOrCount, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised label map over an RGB image (H, W, 3) uint8 (`classes`: the names, or their number).

    Blended a strip of rows at a time (the same values): the whole image as float32 temporaries would be about
    40 bytes a pixel, 2.5 GB for 64 million pixels."""
    lut = _colour_lut(classes)
    out: np.ndarray = np.empty(np.broadcast_shapes(image.shape, (*labels.shape, 3)), np.uint8)
    step = max(1, _STRIP_PIXELS // max(1, int(np.prod(labels.shape[1:], dtype=np.int64))))
    for top in range(0, out.shape[0], step):
        colours = lut[labels[top : top + step].astype(np.int64).clip(0, len(lut) - 1)]
        mixed = (1 - alpha) * image[top : top + step].astype(np.float32) + alpha * colours.astype(np.float32)
        out[top : top + step] = mixed.clip(0, 255).astype(np.uint8)
    return out


def label_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font of every picture's text (legends, titles, axes): Pillow's bundled one, at a size that keeps spaces."""
    return ImageFont.load_default(size=_FONT_SIZE)


def _legend(class_names: Sequence[str], present: Sequence[int], height: int, num_classes: int) -> Image.Image:
    font = label_font()
    row = 16
    width = 20 + int(max((font.getlength(class_names[c]) for c in present), default=28)) + 10
    legend = Image.new("RGB", (max(width, 80), max(height, row * len(present) + 8)), "white")
    draw = ImageDraw.Draw(legend)
    colors = class_colours(class_names)
    for i, c in enumerate(present):
        y = 4 + i * row
        draw.rectangle([4, y + 2, 16, y + 12], fill=tuple(int(v) for v in colors[c]), outline="black")
        draw.text((22, y), class_names[c], fill="black", font=font)
    return legend


def label_map_panel(
    image: np.ndarray,
    labels: np.ndarray | Sequence[np.ndarray],
    class_names: Sequence[str],
    titles: Sequence[str] | None = None,
) -> Image.Image:
    """Side-by-side picture: the image, then each label map as an overlay, then a legend of present classes.

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: one (H, W) label map or several (e.g. ground truth and predictions of several methods).
        class_names: K names (legend text).
        titles: optional caption per panel (image first).
    """
    maps = [labels] if isinstance(labels, np.ndarray) else list(labels)
    k = len(class_names)
    panels = [Image.fromarray(image)] + [Image.fromarray(overlay(image, m, class_names, alpha=0.6)) for m in maps]
    present = sorted({int(v) for m in maps for v in np.unique(m) if v < k})
    h, w = image.shape[:2]
    caption = 16 if titles else 0
    legend = _legend(class_names, present, h, k)
    canvas = Image.new("RGB", (w * len(panels) + legend.width, max(h, legend.height) + caption), "white")
    draw = ImageDraw.Draw(canvas)
    title_font = label_font()
    for i, panel in enumerate(panels):
        canvas.paste(panel, (i * w, caption))
        if titles and i < len(titles):
            draw.text((i * w + 4, 2), titles[i], fill="black", font=title_font)
    canvas.paste(legend, (w * len(panels), caption))
    return canvas


def overlay_with_legend(
    image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.5, legend: bool = True
) -> Image.Image:
    """The colour label map blended over `image` (H, W, 3) uint8, with a legend of the classes present at its right.

    Small images are enlarged (nearest neighbour) so that the legend text stays readable beside them.
    """
    k = len(class_names)
    picture = Image.fromarray(overlay(image, labels, class_names, alpha=alpha))
    if not legend:
        return picture
    scale = max(1, -(-128 // max(min(image.shape[:2]), 1)))  # at least 128 px on the short side
    if scale > 1:
        # Pillow's hints leave out the module-level filter constants it sets at run time; Image.Resampling (the
        # typed spelling) needs Pillow >= 9.1, and otseg supports 9.0.
        nearest = Image.NEAREST  # type: ignore[attr-defined]
        picture = picture.resize((picture.width * scale, picture.height * scale), nearest)
    present = _present(labels, k)
    key = _legend(class_names, present, picture.height, k)
    canvas = Image.new("RGB", (picture.width + key.width, max(picture.height, key.height)), "white")
    canvas.paste(picture, (0, 0))
    canvas.paste(key, (picture.width, 0))
    return canvas


def _present(labels: np.ndarray, k: int) -> list[int]:
    """The class indices (< k) found in `labels`, counted without sorting a copy of the map as `np.unique` does."""
    if labels.size and labels.min() >= 0 and np.issubdtype(labels.dtype, np.integer):
        counts = np.bincount(labels.ravel(), minlength=k)
        return [int(v) for v in np.flatnonzero(counts) if v < k]
    return sorted(int(v) for v in np.unique(labels) if v < k)


def palette_label_image(labels: np.ndarray, num_classes: int, class_names: Sequence[str] | None = None) -> Image.Image:
    """A label map (H, W) as a palette ("P" mode) PNG-ready image: pixel value = class index (255 = ignore).

    Label tools read the indices; image viewers show the `palette` colours. With more than 255 classes the
    indices do not fit a palette: the image is then 16-bit grayscale ("I;16"), pixel value = class index.
    With `class_names`, the palette follows their colour words (`class_colours`).
    """
    if num_classes > 255:
        if labels.size and (labels.min() < 0 or labels.max() > 65535):
            raise BadValueError(f"label values {labels.min()}..{labels.max()} do not fit a 16-bit image (0..65535)")
        return Image.fromarray(labels.astype(np.uint16))
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise BadValueError(f"label values {labels.min()}..{labels.max()} do not fit a palette image (0..255)")
    img = Image.fromarray(labels.astype(np.uint8))  # "L"; putpalette below makes it "P"
    lut = np.zeros((256, 3), np.uint8)
    lut[:num_classes] = class_colours(class_names if class_names is not None else num_classes)
    lut[255] = IGNORE_COLOR
    img.putpalette(lut.ravel().tolist())
    return img
