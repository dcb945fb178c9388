"""A procedural miniature of the zero-shot segmentation problem (numpy + PIL, seeded, no downloads).

The world mirrors the structure of the real benchmarks (PASCAL VOC in particular):

* **Classes are concepts defined by visual attributes**: 4 colours x 4 surface patterns = 16 object classes
  ("red striped", "blue dotted", "green checkered", "yellow plain", ...), drawn on objects of any of 4 shapes
  (circle, square, triangle, cross: a nuisance, as pose is for real objects). Like real classes they are not
  separable pixel by pixel: a pixel's colour names four classes at once, and its pattern is only defined by its
  neighbourhood (a dark pixel may be a stripe, a dot or a check).
* **A fixed seen/unseen split of 12/4 classes** (25 % unseen, as VOC's 15/5). The unseen classes form a Latin
  square (each colour and each pattern is unseen exactly once), so every attribute word also occurs in some seen
  class: knowledge can only transfer through what the text encoder learnt about the words, which is the
  mechanism zero-shot segmentation relies on.
* **Background is not a class**: it is labelled 255 (ignore), as VOC's background is in the zero-shot protocol.
  It is textured (clouds, grain, mottling, gradients) in desaturated colours, so it shows no class colour and no
  class pattern.
* **Captions for every image** name every object it contains ("a photo of a small red striped circle and a blue
  dotted shape on a cloudy background"). The CLIP pretraining corpus (`pretraining_corpus`) is a separate set of
  captioned images of *all* classes, including the unseen ones: CLIP has seen every concept in captions, while
  segmentation masks are only used for the seen classes in inductive training.
* **Segmentation images** hold 2-4 objects of distinct classes (unseen ones included: their pixels become
  ignore in inductive training, as in the reference protocol); every object stays at least half visible, so
  the label map holds exactly the classes its caption names.

Every image is drawn from its own generator `default_rng((seed, split, index))`, so a world is reproducible
bit for bit and any image can be regenerated alone. `generate_world` writes the "custom" dataset layout read
by `otseg.data.datasets.build_custom`; `world_dir` caches it under the otseg cache folder.
"""

from __future__ import annotations

import colorsys
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from otseg.errors import BadValueError
from otseg.model.text import cache_dir

__all__ = [
    "BACKGROUNDS",
    "CLASS_NAMES",
    "COLOURS",
    "SHAPES",
    "TEXTURES",
    "UNSEEN_NAMES",
    "SceneObject",
    "WorldConfig",
    "caption_for",
    "caption_vocabulary",
    "demo_cache_root",
    "generate_world",
    "iter_split",
    "pretraining_corpus",
    "render_scene",
    "seen_ids",
    "unseen_ids",
    "world_dir",
]

# Bump when the generator's output changes, so that cached worlds (and CLIPs trained on them) are rebuilt.
GENERATOR_VERSION = 4

# Hues in degrees. Red, yellow, green and blue are at least 55 degrees apart, far more than the per-object hue
# jitter (+-8) plus the training-time hue augmentation (see `presets.demo_data_config`).
COLOURS: tuple[tuple[str, float], ...] = (("red", 0.0), ("green", 120.0), ("blue", 225.0), ("yellow", 55.0))
# Surface patterns; their sizes are `STRIPE_PERIOD`, `DOT_SPACING`, `DOT_RADIUS` and `CHECKER_CELL` below.
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")  # a nuisance, not part of the class
CLASS_NAMES: tuple[str, ...] = tuple(f"{colour} {texture}" for colour, _ in COLOURS for texture in TEXTURES)
# A Latin square: every colour and every pattern is unseen once, so each word is still taught by seen masks.
UNSEEN_NAMES: tuple[str, ...] = ("red dotted", "green checkered", "blue plain", "yellow striped")
BACKGROUNDS: tuple[str, ...] = ("smooth", "cloudy", "grainy", "mottled")
# Pattern sizes in pixels, each drawn uniformly from its range per object.
STRIPE_PERIOD: tuple[float, float] = (6.0, 7.5)
DOT_SPACING: tuple[float, float] = (6.5, 8.0)
DOT_RADIUS: tuple[float, float] = (1.6, 2.1)
# Checks of 2.1-2.7 px: an 8 px patch holds about three periods, as a 16 px patch of a photo holds several periods
# of a fine texture. At 3.5-4.5 px (version 3) one period filled a patch and, inside it, checks were hard to tell
# from stripes: 89 % of a linear probe's errors kept the colour and missed the pattern (research/demo-notes.md, step 9).
CHECKER_CELL: tuple[float, float] = (2.1, 2.7)

# Caption grammar. Templates of the demo presets are phrased the same way, as CLIP prompts are phrased like
# web captions.
_PREFIXES = ("a photo of ", "a picture of ", "an image of ")
_SMALL, _LARGE = 20.0, 30.0  # bounding sizes (px) below / above which a caption says "small" / "large"
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered: soft, anti-aliased edges like a photograph
_SPLIT_IDS = {"train": 1, "val": 2, "pretrain": 3, "holdout": 4}
SPLITS: tuple[str, ...] = ("train", "val", "holdout")  # the splits written to disk


def seen_ids() -> tuple[int, ...]:
    return tuple(i for i, n in enumerate(CLASS_NAMES) if n not in UNSEEN_NAMES)


def unseen_ids() -> tuple[int, ...]:
    return tuple(CLASS_NAMES.index(n) for n in UNSEEN_NAMES)


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of a world. The class set and the split are fixed by design (module constants), not configured."""

    seed: int = 0
    image_size: int = 64
    num_train: int = 600
    num_val: int = 200
    # Seen classes only, never trained on: the validation split whose curve shows when training has converged.
    num_holdout: int = 200
    num_pretrain: int = 12000  # captioned images for CLIP pretraining (kept in memory, never written)
    # Distinct classes per segmentation image (inclusive): few, large objects, as in VOC, so that most object
    # pixels lie in patches of one object (with 12-40 px objects, 70 % of them were in mixed 8 px patches).
    objects: tuple[int, int] = (1, 3)
    pretrain_objects: tuple[int, int] = (1, 3)  # per pretraining image: single-object photos are common online
    object_size: tuple[float, float] = (20.0, 44.0)  # bounding size in pixels
    pretrain_object_size: tuple[float, float] = (10.0, 44.0)
    border_prob: float = 0.25  # objects cut off by the frame, as in photographs
    pretrain_border_prob: float = 0.35
    portrait_prob: float = 0.12  # pretraining close-ups: one object filling the frame ("a portrait of a ...")
    min_visible: float = 0.5  # share of an object's own area that must stay unoccluded

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Hash of everything that determines the generated data (settings, class set, generator version)."""
        spec = {"config": self.to_dict(), "classes": CLASS_NAMES, "unseen": UNSEEN_NAMES, "v": GENERATOR_VERSION}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def pretraining_key(self) -> str:
        """Hash of what determines the pretraining corpus alone (the segmentation splits' settings left out)."""
        fields = ("seed", "image_size", "num_pretrain", "pretrain_objects", "pretrain_object_size",
                  "pretrain_border_prob", "portrait_prob", "min_visible")  # fmt: skip
        spec = {"config": {f: getattr(self, f) for f in fields}, "classes": CLASS_NAMES, "v": GENERATOR_VERSION}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SceneObject:
    """One object of a scene: its class id, shape, size (px) and its visible hard mask."""

    class_id: int
    shape: str
    size: float
    mask: np.ndarray = field(repr=False)
    full_area: float = 1.0  # pixels of the whole shape, inside and outside the frame
    portrait: bool = False

    @property
    def visible(self) -> float:
        """Share of the object that is visible (not cut off by the frame, not hidden by other objects)."""
        return float(self.mask.sum()) / self.full_area

    @property
    def name(self) -> str:
        return CLASS_NAMES[self.class_id]


# ---- drawing ----------------------------------------------------------------------------------------------


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _shape_outline(shape: str, size: float, angle: float) -> np.ndarray | None:
    """Polygon (P, 2) of `shape` centred on 0 with bounding size about `size`; None for the circle."""
    half = size / 2
    if shape == "circle":
        return None
    if shape == "square":
        # A slightly smaller side than the circle's diameter keeps the two shapes' areas comparable.
        a = 0.85 * half
        pts = np.array([[-a, -a], [a, -a], [a, a], [-a, a]])
    elif shape == "triangle":
        r = 1.1 * half  # circumradius; the centroid is the origin
        t = np.deg2rad(np.array([-90.0, 30.0, 150.0]))
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    elif shape == "cross":
        a, w = half, 0.36 * half
        pts = np.array(
            [[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w], [w, a], [-w, a], [-w, w], [-a, w], [-a, -w], [-w, -w]]
        )
    else:
        raise BadValueError(f"unknown shape {shape!r}")
    return _rotate(pts, angle)


def _shape_alpha(
    shape: str, size: float, centre: tuple[float, float], angle: float, canvas: int
) -> tuple[np.ndarray, float]:
    """Anti-aliased coverage (canvas, canvas) float32 in [0, 1] of one shape, and the shape's whole area in pixels
    (inside and outside the frame: an object cut off by the border is only partly visible)."""
    ss = _SUPERSAMPLE
    cy, cx = centre
    # Draw only the shape's pixel box (a rotated shape stays within 0.75 * size of its centre), supersampled.
    reach = int(np.ceil(0.75 * size)) + 1
    y0, x0 = int(np.floor(cy)) - reach, int(np.floor(cx)) - reach
    side = 2 * reach + 1
    hi = Image.new("L", (side * ss, side * ss), 0)
    draw = ImageDraw.Draw(hi)
    ly, lx = cy - y0, cx - x0
    outline = _shape_outline(shape, size, angle)
    if outline is None:
        r = size / 2
        draw.ellipse([(lx - r) * ss, (ly - r) * ss, (lx + r) * ss, (ly + r) * ss], fill=255)
    else:
        pts = (outline + np.array([lx, ly])) * ss
        draw.polygon([tuple(p) for p in pts.tolist()], fill=255)
    local = np.asarray(hi, dtype=np.float32).reshape(side, ss, side, ss).mean(axis=(1, 3)) / 255.0
    full_area = float((local >= 0.5).sum())
    alpha = np.zeros((canvas, canvas), np.float32)
    cy0, cx0 = max(y0, 0), max(x0, 0)
    cy1, cx1 = min(y0 + side, canvas), min(x0 + side, canvas)
    if cy1 > cy0 and cx1 > cx0:
        alpha[cy0:cy1, cx0:cx1] = local[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return alpha, full_area


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v), dtype=np.float32) * 255.0


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a random (cells+1)^2 grid bilinearly upsampled to (size, size)."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    pos = np.linspace(0, cells, size, dtype=np.float32)
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    f = pos - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """A desaturated textured background (size, size, 3) float32 on the 0..255 scale."""
    hue = rng.uniform(0, 360)
    sat = rng.uniform(0.0, 0.18)  # low saturation: the background never shows a class colour
    v1 = rng.uniform(0.3, 0.85)
    v2 = float(np.clip(v1 + rng.choice([-1, 1]) * rng.uniform(0.12, 0.3), 0.1, 0.95))
    c1, c2 = _hsv(hue, sat, v1), _hsv(hue + rng.uniform(-30, 30), sat, v2)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = x * np.cos(theta) + y * np.sin(theta)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    # No regular pattern: stripes, dots or checks here would be class evidence.
    if kind == "smooth":
        mix = ramp
    elif kind == "cloudy":
        mix = _smooth_noise(rng, size, 3)
    elif kind == "grainy":
        mix = 0.5 * ramp + 0.5 * rng.random((size, size)).astype(np.float32)
    elif kind == "mottled":
        mix = _smooth_noise(rng, size, 8)
    else:
        raise BadValueError(f"unknown background {kind!r}")
    return c1 * (1 - mix[..., None]) + c2 * mix[..., None]


def _pattern(rng: np.random.Generator, texture: str, size: int) -> np.ndarray:
    """Brightness factor (size, size) in [0.4, 1] of a surface pattern, anti-aliased (drawn at 4x, averaged)."""
    if texture == "plain":
        return np.ones((size, size), np.float32)
    ss = _SUPERSAMPLE
    y, x = (np.mgrid[0 : size * ss, 0 : size * ss].astype(np.float32) + 0.5) / ss
    angle = rng.uniform(0, np.pi)  # any orientation: a pattern is recognised whichever way it lies
    u = x * np.cos(angle) + y * np.sin(angle) + rng.uniform(0, 10)
    v = -x * np.sin(angle) + y * np.cos(angle) + rng.uniform(0, 10)
    if texture == "striped":
        period = rng.uniform(*STRIPE_PERIOD)
        dark = (u % period) < period / 2
    elif texture == "dotted":
        spacing = rng.uniform(*DOT_SPACING)
        radius = rng.uniform(*DOT_RADIUS)
        du, dv = (u % spacing) - spacing / 2, (v % spacing) - spacing / 2
        dark = du**2 + dv**2 < radius**2
    elif texture == "checkered":
        cell = rng.uniform(*CHECKER_CELL)
        dark = ((np.floor(u / cell) + np.floor(v / cell)) % 2) == 0
    else:
        raise BadValueError(f"unknown texture {texture!r}")
    factor = np.where(dark, 0.4, 1.0).astype(np.float32)
    return factor.reshape(size, ss, size, ss).mean(axis=(1, 3))


def _object_paint(rng: np.random.Generator, colour_hue: float, texture: str, size: int) -> np.ndarray:
    """The pixels an object is painted with (size, size, 3): jittered colour, its pattern, and lighting."""
    hue = colour_hue + rng.uniform(-8, 8)
    sat, val = rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)
    base = _hsv(hue, sat, val)
    theta = rng.uniform(0, 2 * np.pi)  # lit from one side: a nuisance gradient over the object
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    light = 1.0 + rng.uniform(0.0, 0.3) * ((x - 0.5) * np.cos(theta) + (y - 0.5) * np.sin(theta))
    shade = _pattern(rng, texture, size) * light
    return np.clip(base[None, None, :] * shade[..., None], 0, 255)


# ---- scenes -----------------------------------------------------------------------------------------------


def _place(rng: np.random.Generator, size: int, obj_size: float, border: bool) -> tuple[float, float]:
    """An object's centre: well inside the frame, or (`border`) near or past one edge, so the frame cuts it off."""
    margin = obj_size / 2 + 1
    inside = [float(rng.uniform(margin, size - margin)) for _ in range(2)]
    if border:
        axis, far = int(rng.integers(2)), bool(rng.integers(2))
        depth = float(rng.uniform(-0.3, 0.3)) * obj_size  # centre distance to the edge (negative: outside)
        inside[axis] = size - depth if far else depth
    return inside[0], inside[1]


def render_scene(
    rng: np.random.Generator,
    size: int,
    num_objects: int,
    object_size: tuple[float, float] = (12.0, 40.0),
    min_visible: float = 0.5,
    classes: Sequence[int] | None = None,
    border_prob: float = 0.0,
    portrait: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[SceneObject], str]:
    """Draw one scene.

    Args:
        rng: the scene's own generator.
        size: image side in pixels.
        num_objects: objects to place (distinct classes); fewer are kept when one cannot be placed without
            hiding more than `1 - min_visible` of an earlier one.
        object_size: range of the objects' bounding sizes in pixels.
        min_visible: share of an object's in-frame area that later objects must leave visible.
        classes: class ids to draw from (default: all).
        border_prob: chance that an object is placed across the frame's edge (partly visible).
        portrait: one close-up object filling most of the frame (`num_objects` is ignored).

    Returns:
        (image uint8 (size, size, 3) RGB, label uint8 (size, size) with class ids and 255 for background,
        the visible objects, the background kind).
    """
    pool = np.arange(len(CLASS_NAMES)) if classes is None else np.asarray(classes)
    count = 1 if portrait else min(num_objects, len(pool))
    chosen = rng.choice(pool, size=count, replace=False)
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    image = _background(rng, size, kind)
    label = np.full((size, size), 255, np.uint8)
    objects: list[SceneObject] = []
    for class_id in chosen.tolist():
        colour_hue = COLOURS[class_id // len(TEXTURES)][1]
        texture = TEXTURES[class_id % len(TEXTURES)]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        for _ in range(20):  # re-draw the placement until no earlier object would be mostly hidden
            if portrait:
                obj_size = float(rng.uniform(0.8, 0.95)) * size
                centre = (float(size / 2 + rng.uniform(-3, 3)), float(size / 2 + rng.uniform(-3, 3)))
            else:
                obj_size = float(rng.uniform(*object_size))
                centre = _place(rng, size, obj_size, bool(rng.random() < border_prob))
            angle = float(rng.uniform(-0.35, 0.35))  # up to +-20 degrees: upright-ish, like most photos
            alpha, full_area = _shape_alpha(shape, obj_size, centre, angle, size)
            mask = alpha >= 0.5
            if mask.sum() < 20:
                continue
            if all((o.mask & ~mask).sum() >= min_visible * o.mask.sum() for o in objects):
                break
        else:
            continue  # no placement kept every earlier object visible enough: leave this class out
        for o in objects:
            o.mask = o.mask & ~mask
        paint = np.zeros((size, size, 3), np.float32)
        ys, xs = np.nonzero(alpha > 0)
        y0, x0 = ys.min(), xs.min()
        extent = int(max(ys.max() - y0, xs.max() - x0)) + 1
        tile = _object_paint(rng, colour_hue, texture, extent)
        paint[y0 : y0 + extent, x0 : x0 + extent] = tile[: size - y0, : size - x0]
        image = image * (1 - alpha[..., None]) + paint * alpha[..., None]
        label[mask] = class_id
        objects.append(SceneObject(class_id, shape, obj_size, mask, full_area=max(full_area, 1.0), portrait=portrait))
    image = image + rng.normal(0.0, 3.0, image.shape)  # sensor noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label, objects, kind


def object_phrase(rng: np.random.Generator, o: SceneObject) -> str:
    """How a caption names one object, with the words of CLIP's prompt templates given a visual meaning:

    * "a portrait of a X": a close-up filling the frame;
    * "a segment of a X": under half of the object is visible (cut off by the frame or hidden by others);
    * "a part of a X": half to 80 % visible;
    * "small X" / "medium X" / "large X" (or "a X"): a whole object, by its size.

    The shape is sometimes named after the class ("red striped circle"); it is not part of the class.
    """
    noun = f" {o.shape}" if rng.random() < 0.3 else ""
    if o.portrait:
        return f"a portrait of a {o.name}{noun}"
    if o.visible < 0.5:
        return f"a segment of a {o.name}{noun}"
    if o.visible < 0.8:
        return f"a part of a {o.name}{noun}"
    if rng.random() < 0.25:
        return f"a {o.name}{noun}"
    size_word = "small" if o.size < _SMALL else "large" if o.size > _LARGE else "medium"
    return f"{size_word} {o.name}{noun}"


def caption_vocabulary() -> set[str]:
    """Every word the captions can use (class words, shapes, size and part words, prefixes, backgrounds): all a
    text tower pretrained on this world has read."""
    words = {w for name in CLASS_NAMES for w in name.split()} | set(SHAPES) | set(BACKGROUNDS)
    words |= {"a", "of", "portrait", "segment", "part", "small", "medium", "large", "and", "on", "background"}
    words |= {w for prefix in _PREFIXES for w in prefix.split()}
    return words


def caption_for(rng: np.random.Generator, objects: Sequence[SceneObject], background: str) -> str:
    """A caption naming every object (random order, `object_phrase`) and sometimes the background."""
    phrases = [object_phrase(rng, objects[i]) for i in rng.permutation(len(objects)).tolist()]
    listed = " and ".join(phrases)
    r = rng.random()
    if phrases[0].startswith("a ") and r < 0.3:
        prefix = ""  # "a part of a red striped." stands alone, as the templates do
    else:
        prefix = _PREFIXES[0] if r < 0.75 else _PREFIXES[1] if r < 0.9 else _PREFIXES[2]
    r = rng.random()
    suffix = f" on a {background} background" if r < 0.4 else ""
    return f"{prefix}{listed}{suffix}."


def _scene(cfg: WorldConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray, list[SceneObject], str]:
    rng = np.random.default_rng((cfg.seed, _SPLIT_IDS[split], index))
    pretrain = split == "pretrain"
    lo, hi = cfg.pretrain_objects if pretrain else cfg.objects
    n = int(rng.integers(lo, hi + 1))
    sizes = cfg.pretrain_object_size if pretrain else cfg.object_size
    border = cfg.pretrain_border_prob if pretrain else cfg.border_prob
    portrait = pretrain and bool(rng.random() < cfg.portrait_prob)
    classes = seen_ids() if split == "holdout" else None
    image, label, objects, kind = render_scene(
        rng, cfg.image_size, n, sizes, cfg.min_visible, classes=classes, border_prob=border, portrait=portrait
    )
    return image, label, objects, caption_for(rng, objects, kind)


def iter_split(cfg: WorldConfig, split: str) -> Iterator[tuple[str, np.ndarray, np.ndarray, list[SceneObject], str]]:
    """(stem, image, label, objects, caption) for every image of `split` ("train", "val", "holdout" or
    "pretrain")."""
    count = {"train": cfg.num_train, "val": cfg.num_val, "holdout": cfg.num_holdout, "pretrain": cfg.num_pretrain}
    for i in range(count[split]):
        yield (f"{split}_{i:05d}", *_scene(cfg, split, i))


def pretraining_corpus(cfg: WorldConfig) -> tuple[np.ndarray, list[str]]:
    """CLIP's pretraining data: (N, S, S, 3) uint8 images of all classes and their N captions (no masks)."""
    images, captions = [], []
    for _, image, _, _, caption in iter_split(cfg, "pretrain"):
        images.append(image)
        captions.append(caption)
    return np.stack(images), captions


# ---- on disk ----------------------------------------------------------------------------------------------


def generate_world(root: str | os.PathLike, cfg: WorldConfig) -> Path:
    """Write the segmentation splits in the "custom" layout that `otseg.data.datasets.build_custom` reads.

    Layout::

        root/classes.txt, split.json ({"unseen": [names]}), world.json (settings, classes, split)
        root/{train,val,holdout}/images/<stem>.png, labels/<stem>.png (class ids, 255 = background), captions.json
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
    (root / "split.json").write_text(json.dumps({"unseen": list(UNSEEN_NAMES)}) + "\n", encoding="utf-8")
    for split in SPLITS:
        images, labels = root / split / "images", root / split / "labels"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        captions: dict[str, dict[str, Any]] = {}
        for stem, image, label, objects, caption in iter_split(cfg, split):
            Image.fromarray(image).save(images / f"{stem}.png")
            Image.fromarray(label, mode="L").save(labels / f"{stem}.png")
            captions[stem] = {"caption": caption, "classes": sorted(o.name for o in objects)}
        (root / split / "captions.json").write_text(json.dumps(captions, indent=0) + "\n", encoding="utf-8")
    info = {
        "generator_version": GENERATOR_VERSION,
        "config": cfg.to_dict(),
        "classes": list(CLASS_NAMES),
        "unseen": list(UNSEEN_NAMES),
        "background": "label 255 (ignored, as VOC's background in the zero-shot protocol)",
    }
    (root / "world.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return root


def demo_cache_root() -> Path:
    """Where the demo caches worlds and tiny CLIPs: beside the text-embedding cache ($OTSEG_CACHE_DIR)."""
    return cache_dir().parent / "demo"


def world_dir(cfg: WorldConfig, cache: str | os.PathLike | None = None) -> Path:
    """The folder of world `cfg`, generated on first use (atomically: a crash never leaves half a world)."""
    base = Path(cache) if cache is not None else demo_cache_root()
    target = base / f"world-{cfg.key()}"
    if (target / "world.json").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    if target.exists():  # left by an interrupted older version without world.json: regenerate it
        shutil.rmtree(target, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".world-", dir=base))
    try:
        generate_world(tmp, cfg)
        with contextlib.suppress(OSError):  # another process finished the same world first: keep theirs
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
