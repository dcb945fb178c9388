"""`otseg prepare context59`: PASCAL VOC 2010 + PASCAL Context's `trainval_merged.json` -> the layout
`build_context59` reads, decoded with numpy alone (no Detail API).

Inputs in --src: `VOCtrainval_03-May-2010.tar` (or its `VOCdevkit/VOC2010` folder) and `trainval_merged.json`
(the PASCAL in Detail annotation file; also found inside a VOC2010 folder).

The JSON holds `images` (`image_id`, `file_name`, `phase` "train"/"val", `height`, `width`) and
`annos_segmentation` (`image_id`, `category_id`, `segmentation`: a COCO run-length encoding, `counts` as
COCO's compressed string or a list, in column-major order). Like the Detail API's `getMask(img)`, each
image's mask starts at 0 and every annotation of the image, in file order, paints its category id over its
pixels. The 59 category ids of PASCAL Context-59 map, in increasing id order, to 1..59 (the reference's class
order: aeroplane, bag, bed, ...), and everything else to 0 (background, ignored after reduce_zero_label), as
mmsegmentation's `pascal_context.py` does. The split lists are the JSON's own `phase` fields: 4,996 train and
5,104 val images with the published file, two and one fewer than the 4,998 / 5,105 of the paper's split
(the organisers revised the split after its release; mmsegmentation's converted lists have the same
4,996 / 5,104, as its users report).

Writes, under DATA_ROOT/VOCdevkit/VOC2010: `JPEGImages/` (the images the JSON lists),
`SegmentationClassContext/<stem>.png` (mode L, 0 = background, 1..59) and
`ImageSets/SegmentationContext/{train,val}.txt`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from otseg.data.facts import dataset_facts
from otseg.prepare.common import (
    Job,
    PrepareOptions,
    copy_job,
    existing_names,
    find_input,
    plural,
    remove_stale_temporaries,
    run_jobs,
    safe_stem,
    verify_checksum,
    write_list_atomic,
    write_png_atomic,
)

__all__ = ["CONTEXT59_CATEGORY_IDS", "MAX_SIDE", "decode_rle", "label_lut", "prepare_context59", "render_mask"]

WHAT = "otseg prepare context59"
# The PASCAL Context category ids (459-class numbering) of the 59 classes, increasing; id i-th -> class i+1.
CONTEXT59_CATEGORY_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144, 158,
    159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355, 360, 366,
    368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip
assert len(CONTEXT59_CATEGORY_IDS) == dataset_facts("context59").classes.num_classes


# Bounds that keep memory finite for any input: PASCAL images are at most 500 px a side, the JSON about 0.5 GB.
MAX_SIDE = 10_000
MAX_JSON_BYTES = 4 << 30


def label_lut(max_id: int) -> np.ndarray:
    """int64 lookup table `(max_id + 1,)`: category id -> Context-59 label (1..59), every other id -> 0."""
    lut = np.zeros(max(max_id, CONTEXT59_CATEGORY_IDS[-1]) + 1, dtype=np.int64)
    lut[list(CONTEXT59_CATEGORY_IDS)] = np.arange(1, len(CONTEXT59_CATEGORY_IDS) + 1)
    return lut


def _rle_counts(counts: str | list[int], where: str) -> np.ndarray:
    """Run lengths from COCO's compressed string (LEB128-like, 6 bits a char, deltas from the 3rd run on)."""
    if isinstance(counts, list):
        return np.asarray(counts, dtype=np.int64)
    if not isinstance(counts, str):
        raise ValueError(f"{where}: RLE counts are {type(counts).__name__}, expected a string or a list")
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError(f"{where}: RLE string ends inside a number")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"{where}: RLE string has the invalid character {counts[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return np.asarray(out, dtype=np.int64)


def decode_rle(segmentation: dict[str, Any], where: str) -> np.ndarray:
    """A COCO RLE `{"size": [h, w], "counts": ...}` as a bool `(h, w)` mask (runs alternate 0/1, column-major)."""
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise ValueError(f"{where}: segmentation is not a run-length encoding {{size, counts}} (polygons?)")
    h, w = (int(v) for v in segmentation["size"])
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise ValueError(f"{where}: mask size {h}x{w} is outside 1..{MAX_SIDE} pixels a side")
    runs = _rle_counts(segmentation["counts"], where)
    if (runs < 0).any() or int(runs.sum()) != h * w:
        raise ValueError(f"{where}: RLE runs add up to {int(runs.sum())} pixels, the mask has {h}x{w} = {h * w}")
    flat = np.repeat((np.arange(len(runs)) % 2).astype(bool), runs)
    return flat.reshape((w, h)).T


def render_mask(height: int, width: int, annotations: list[tuple[int, dict[str, Any]]], where: str) -> np.ndarray:
    """uint8 `(H, W)` Context-59 label map of one image: annotations painted in order, then mapped."""
    ids = np.zeros((height, width), dtype=np.int64)
    for category, segmentation in annotations:
        m = decode_rle(segmentation, where)
        if m.shape != ids.shape:
            raise ValueError(f"{where}: an annotation is {m.shape[0]}x{m.shape[1]}, the image {height}x{width}")
        ids[m] = category
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) > 1_000_000):
        raise ValueError(f"{where}: category ids outside 0..1000000 ({int(ids.min())}..{int(ids.max())})")
    lut = label_lut(int(ids.max()) if ids.size else 0)
    return lut[ids].astype(np.uint8)


def _render_job(payload: tuple[int, int, list[tuple[int, dict[str, Any]]]], dest: Path, where: str) -> int:
    h, w, anns = payload
    write_png_atomic(dest, render_mask(h, w, anns, where))
    return 1


def _load_json(path_or_bytes: Path | bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where} is not valid JSON ({exc}); download trainval_merged.json again") from None
    if not isinstance(data, dict) or not {"images", "annos_segmentation"} <= set(data):
        keys = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{where}: expected the PASCAL in Detail format (keys images, annos_segmentation), got {keys}")
    return data


def prepare_context59(opts: PrepareOptions) -> dict[str, int]:
    """Convert the downloads in `opts.src` into `opts.data_root`; returns the counts written (see module doc)."""
    voc_in = find_input(
        opts.src, ("VOCtrainval_03-May-2010.tar",), "VOC2010/", "JPEGImages", what=WHAT, entry="voc2010-trainval"
    )
    json_in = find_input(opts.src, (), "", "trainval_merged.json", what=WHAT, entry="pascal-context-trainval-merged")
    if opts.verify_checksums:
        note = verify_checksum(voc_in, opts.data_root, opts.progress)
        if note:
            print(note)
    json_path = json_in.path / "trainval_merged.json"
    if json_path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(
            f"{json_path} has {json_path.stat().st_size:,} bytes: not PASCAL Context's trainval_merged.json"
        )
    data = _load_json(json_path, str(json_path))

    try:
        images: dict[int, dict[str, Any]] = {}
        for img in data["images"]:
            if img.get("phase") in ("train", "val"):
                stem = safe_stem(Path(str(img["file_name"])).stem, f"{json_path}: image {img.get('image_id')}")
                images[int(img["image_id"])] = {**img, "stem": stem}
        anns: dict[int, list[tuple[int, dict[str, Any]]]] = {i: [] for i in images}
        for ann in data["annos_segmentation"]:
            image_id = int(ann["image_id"])
            if image_id in anns:
                anns[image_id].append((int(ann["category_id"]), ann["segmentation"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, ValueError) and str(json_path) in str(exc):
            raise
        raise ValueError(
            f"{json_path}: unexpected PASCAL in Detail entry ({type(exc).__name__}: {exc}); download "
            "trainval_merged.json again"
        ) from None
    del data

    out = opts.data_root / "VOCdevkit" / "VOC2010"
    img_dir, ann_dir = out / "JPEGImages", out / "SegmentationClassContext"
    lists_dir = out / "ImageSets" / "SegmentationContext"
    for folder in (img_dir, ann_dir, lists_dir):
        remove_stale_temporaries(folder)

    # 1. The listed images, copied (one pass over the tar).
    wanted = {f"{img['stem']}.jpg" for img in images.values()}
    have = existing_names(img_dir)

    def image_jobs():
        for m in voc_in.members(("JPEGImages/",)):
            name = m.rel.rsplit("/", 1)[-1]
            if name in wanted and name not in have:
                yield copy_job(m, img_dir / name)

    run_jobs(image_jobs(), 0, "VOC2010 images", opts.progress)
    have = existing_names(img_dir)
    missing = sorted(wanted - have)
    if missing:
        raise FileNotFoundError(
            f"{WHAT}: {len(missing)} image(s) listed in {json_path} are not in {voc_in.describe()} (first: "
            f"{missing[0]}); use VOCtrainval_03-May-2010.tar (PASCAL VOC 2010)"
        )

    # 2. The masks, rendered in worker processes.
    done = existing_names(ann_dir)

    def mask_jobs():
        for image_id, img in images.items():
            name = f"{img['stem']}.png"
            if name not in done:
                payload = (int(img["height"]), int(img["width"]), anns[image_id])
                yield Job(ann_dir / name, _render_job, payload, (f"{json_path}: image {img['file_name']}",))

    run_jobs(mask_jobs(), opts.workers, "Context masks (RLE -> PNG)", opts.progress, total=len(images))
    splits = {
        phase: sorted(img["stem"] for img in images.values() if img["phase"] == phase) for phase in ("train", "val")
    }
    for phase, stems in splits.items():
        write_list_atomic(lists_dir / f"{phase}.txt", stems, f"{json_path}: images of phase {phase}")
    counts = {
        "images": len(have & wanted),
        "masks": len(existing_names(ann_dir)),
        **{k: len(v) for k, v in splits.items()},
    }
    print(
        f"context59: wrote {out}: {plural(counts['images'], 'image')}, {plural(counts['masks'], 'mask')} in "
        f"SegmentationClassContext; train {counts['train']:,}, val {counts['val']:,} (the published "
        "trainval_merged.json gives 4,996 / 5,104)"
    )
    return counts
