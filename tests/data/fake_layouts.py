"""Writers of tiny fake datasets in each on-disk layout read by `otseg.data.datasets`.

Each `make_*` writes under `root` and returns the path to pass to `build_dataset` as `root`. Images are
JPEGs of `size = (H, W)` (default 64x80) whose colour depends on the class under each pixel (plus noise),
and labels are a background with a few random rectangles of the given raw class ids, so crops see several
classes. Everything is seeded: the same call writes the same files.

Import as `from fake_layouts import make_voc, make_context, make_coco_stuff, make_custom`: pytest's default
("prepend") import mode puts each test file's folder on sys.path, so this works from tests/data/. From other
test folders, import it as `from data.fake_layouts import ...` (tests/ itself is on sys.path through the
rootdir conftest) or put tests/data on sys.path in that folder's conftest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "VOC_PALETTE",
    "fake_label",
    "make_coco_stuff",
    "make_context",
    "make_custom",
    "make_voc",
    "write_image",
    "write_label",
]


def _voc_palette() -> list[int]:
    """PASCAL VOC's bit-interleaved colour map, 256 RGB triples flattened (index 255 = cream)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


VOC_PALETTE = _voc_palette()


def fake_label(
    rng: np.random.Generator,
    size: tuple[int, int],
    classes: Sequence[int],
    background: int,
    n_rects: int = 3,
    boundary: int | None = None,
) -> np.ndarray:
    """A uint8 `(H, W)` map: `background` with `n_rects` rectangles of ids drawn from `classes`.

    With `boundary` set, each rectangle gets a 1-pixel outline of that value (like VOC's 255 "void" edges).
    """
    h, w = size
    label = np.full((h, w), background, dtype=np.uint8)
    for _ in range(n_rects):
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        y1, x1 = int(rng.integers(y0 + 8, h + 1)), int(rng.integers(x0 + 8, w + 1))
        label[y0:y1, x0:x1] = int(rng.choice(classes))
        if boundary is not None:
            label[y0, x0:x1] = label[y1 - 1, x0:x1] = boundary
            label[y0:y1, x0] = label[y0:y1, x1 - 1] = boundary
    return label


def write_image(path: Path, label: np.ndarray, rng: np.random.Generator) -> None:
    """A JPEG whose colour follows `label` (so images and labels line up visibly), with mild noise."""
    label = label.astype(np.int64)
    base = np.stack([(label * 37) % 256, (label * 91 + 60) % 256, (label * 53 + 120) % 256], axis=-1)
    noise = rng.integers(-10, 11, size=base.shape)
    img = np.clip(base.astype(np.int64) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img, "RGB").save(path, quality=90)


def write_label(path: Path, label: np.ndarray, palette: bool = False) -> None:
    """Save a label map as a PNG: mode P with the VOC palette (indices = ids), or mode L."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label.astype(np.uint8), "P" if palette else "L")
    if palette:
        im.putpalette(VOC_PALETTE)
    im.save(path)


def _write_list(path: Path, stems: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(s + "\n" for s in stems))


def make_voc(
    root: Path,
    n_train: int = 6,
    n_val: int = 3,
    n_aug: int = 4,
    size: tuple[int, int] = (64, 80),
    seed: int = 0,
    aug_list_name: str = "trainaug.txt",
) -> Path:
    """PASCAL VOC 2012 aug: ROOT/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass(Aug), ImageSets/Segmentation}.

    Raw ids: 0 background, classes 1..20, 255 outlines (SegmentationClass only, palette PNGs); the aug masks
    are mode-L PNGs without outlines. The aug list reuses the train stems first (as the real lists overlap).
    Returns ROOT (the folder holding VOCdevkit).
    """
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    classes = [1, 5, 9, 15, 16, 20]
    train = [f"2007_{i:06d}" for i in range(n_train)]
    val = [f"2008_{i:06d}" for i in range(n_val)]
    aug = (train + [f"2009_{i:06d}" for i in range(n_aug)])[:n_aug]
    for stem in train + val:
        lab = fake_label(rng, size, classes, background=0, boundary=255)
        write_label(voc / "SegmentationClass" / f"{stem}.png", lab, palette=True)
        write_image(voc / "JPEGImages" / f"{stem}.jpg", lab, rng)
    for stem in aug:
        lab = fake_label(rng, size, classes, background=0)
        write_label(voc / "SegmentationClassAug" / f"{stem}.png", lab)
        if not (voc / "JPEGImages" / f"{stem}.jpg").exists():
            write_image(voc / "JPEGImages" / f"{stem}.jpg", lab, rng)
    lists = voc / "ImageSets" / "Segmentation"
    _write_list(lists / "train.txt", train)
    _write_list(lists / "val.txt", val)
    _write_list(lists / aug_list_name, aug)
    return root


def make_context(root: Path, n_train: int = 6, n_val: int = 3, size: tuple[int, int] = (64, 80), seed: int = 1) -> Path:
    """PASCAL Context: ROOT/VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext, ImageSets/SegmentationContext}.

    Raw ids: 0 background, classes 1..59 (mode-L PNGs, as mmseg's converter writes). Returns ROOT.
    """
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2010"
    classes = [1, 8, 15, 30, 45, 59]
    train = [f"2008_{i:06d}" for i in range(n_train)]
    val = [f"2010_{i:06d}" for i in range(n_val)]
    for stem in train + val:
        lab = fake_label(rng, size, classes, background=0)
        write_label(voc / "SegmentationClassContext" / f"{stem}.png", lab)
        write_image(voc / "JPEGImages" / f"{stem}.jpg", lab, rng)
    lists = voc / "ImageSets" / "SegmentationContext"
    _write_list(lists / "train.txt", train)
    _write_list(lists / "val.txt", val)
    return root


def make_coco_stuff(
    root: Path, n_train: int = 6, n_val: int = 3, size: tuple[int, int] = (64, 80), seed: int = 2
) -> Path:
    """COCO-Stuff 164k: ROOT/coco_stuff164k/{images,annotations}/{train2017,val2017}.

    Label ids 0..170 with 255 unlabelled, in `<stem>_labelTrainIds.png` (mode L). Returns ROOT.
    """
    rng = np.random.default_rng(seed)
    base = root / "coco_stuff164k"
    classes = [0, 19, 56, 112, 156, 170]
    for split, n, offset in (("train2017", n_train, 1), ("val2017", n_val, 500000)):
        for i in range(n):
            stem = f"{offset + i:012d}"
            lab = fake_label(rng, size, classes, background=255)
            lab[-6:, -6:] = 0  # always some id 0 ("person"), a real class here (no reduce_zero_label)
            write_label(base / "annotations" / split / f"{stem}_labelTrainIds.png", lab)
            write_image(base / "images" / split / f"{stem}.jpg", lab, rng)
    return root


def make_custom(
    root: Path,
    n_train: int = 6,
    n_val: int = 3,
    size: tuple[int, int] = (64, 80),
    seed: int = 3,
    class_names: Sequence[str] = ("sky", "tree", "road", "car"),
    unseen: Sequence[str | int] | None = ("car",),
    split_folders: bool = True,
) -> Path:
    """A custom folder: ROOT/classes.txt, ROOT/split.json and ROOT/{train,val}/{images,labels}.

    With `split_folders=False` the `n_train` images go to ROOT/{images,labels} (one folder for all splits).
    Labels are mode-L PNGs with ids 0..K-1 (background = class 0) and 255 outlines. Returns ROOT.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(class_names) + "\n")
    if unseen is not None:
        (root / "split.json").write_text(json.dumps({"unseen": list(unseen)}))
    k = len(class_names)
    splits = [("train", n_train), ("val", n_val)] if split_folders else [("", n_train)]
    for split, n in splits:
        folder = root / split if split else root
        for i in range(n):
            stem = f"{split or 'img'}_{i:03d}"
            lab = fake_label(rng, size, list(range(1, k)), background=0, boundary=255)
            write_label(folder / "labels" / f"{stem}.png", lab)
            write_image(folder / "images" / f"{stem}.jpg", lab, rng)
    return root
