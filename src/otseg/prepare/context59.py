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
from otseg.errors import BadValueError, MissingFileError
from otseg.prepare.common import (
    MAX_LABEL_SIDE,
    Job,
    PrepareOptions,
    check_label_size,
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

__all__ = [
    "CONTEXT59_CATEGORY_IDS",
    "MAX_SIDE",
    "decode_rle",
    "json_int",
    "label_lut",
    "prepare_context59",
    "read_images_and_annotations",
    "render_mask",
]

WHAT = "otseg prepare context59"
# The PASCAL Context category ids (459-class numbering) of the 59 classes, increasing; id i-th -> class i+1.
CONTEXT59_CATEGORY_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144, 158,
    159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355, 360, 366,
    368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip
assert len(CONTEXT59_CATEGORY_IDS) == dataset_facts("context59").classes.num_classes


# Bounds that keep memory finite for any input: PASCAL images are at most 500 px a side, the JSON about 0.5 GB.
# Every height, width and RLE size is checked against the label-map bounds before any mask is allocated.
MAX_SIDE = MAX_LABEL_SIDE
MAX_JSON_BYTES = 1 << 30
MAX_CATEGORY_ID = 1_000_000  # PASCAL Context numbers its 459 categories 1..459 (the largest id in the file: 460)
_MAX_RLE_DIGITS = 13  # 6-bit characters of one run length: 13 hold any 64-bit number, 5 any real mask's


def label_lut(max_id: int) -> np.ndarray:
    """int64 lookup table `(max_id + 1,)`: category id -> Context-59 label (1..59), every other id -> 0."""
    lut = np.zeros(max(max_id, CONTEXT59_CATEGORY_IDS[-1]) + 1, dtype=np.int64)
    lut[list(CONTEXT59_CATEGORY_IDS)] = np.arange(1, len(CONTEXT59_CATEGORY_IDS) + 1)
    return lut


_LABEL_OF = {c: i + 1 for i, c in enumerate(CONTEXT59_CATEGORY_IDS)}


def json_int(value: Any, where: str, low: int, high: int) -> int:
    """`value` from the JSON as an int in low..high; else one ValueError naming `where` (file and JSON path)."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        shown = repr(value) if not isinstance(value, int) or abs(value) < 10**12 else f"{value:.3e}"
        raise BadValueError(f"{where} = {shown[:60]}: expected a whole number in {low:,}..{high:,}")
    return value


def _rle_size(segmentation: Any, where: str) -> tuple[int, int]:
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise BadValueError(f"{where}: segmentation is not a run-length encoding {{size, counts}} (polygons?)")
    size = segmentation["size"]
    if not isinstance(size, list) or len(size) != 2:
        raise BadValueError(f"{where}.size = {str(size)[:60]}: expected [height, width]")
    h = json_int(size[0], f"{where}.size[0]", 1, MAX_SIDE)
    w = json_int(size[1], f"{where}.size[1]", 1, MAX_SIDE)
    check_label_size(h, w, f"{where}.size")
    return h, w


def _rle_counts(counts: Any, where: str, total: int) -> np.ndarray:
    """Run lengths (each 0..`total`, at most `total` + 1 of them) from a list or COCO's compressed string
    (LEB128-like, 6 bits a char, deltas from the 3rd run on); else one ValueError naming `where`."""
    if isinstance(counts, list):
        if len(counts) > total + 1:
            raise BadValueError(f"{where}: {len(counts):,} runs for a mask of {total:,} pixels")
        for i, c in enumerate(counts):
            json_int(c, f"{where}[{i}]", 0, total)
        return np.asarray(counts, dtype=np.int64)
    if not isinstance(counts, str):
        raise BadValueError(f"{where}: RLE counts are {type(counts).__name__}, expected a string or a list")
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise BadValueError(f"{where}: RLE string ends inside a number")
            if k >= _MAX_RLE_DIGITS:
                raise BadValueError(f"{where}: an RLE number of more than {_MAX_RLE_DIGITS} characters (at {p})")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise BadValueError(f"{where}: RLE string has the invalid character {counts[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        if not 0 <= x <= total or len(out) > total:
            raise BadValueError(
                f"{where}: run {len(out)} is {x:,}; a mask of {total:,} pixels holds runs of 0..{total:,}"
            )
        out.append(x)
    return np.asarray(out, dtype=np.int64)


def decode_rle(segmentation: dict[str, Any], where: str) -> np.ndarray:
    """A COCO RLE `{"size": [h, w], "counts": ...}` as a bool `(h, w)` mask (runs alternate 0/1, column-major).

    The size is checked against the label-map bounds and every run against the mask's size before anything is
    allocated; `where` names the file and the JSON path in messages."""
    h, w = _rle_size(segmentation, where)
    runs = _rle_counts(segmentation["counts"], f"{where}.counts", h * w)
    if int(runs.sum()) != h * w:
        raise BadValueError(f"{where}: RLE runs add up to {int(runs.sum())} pixels, the mask has {h}x{w} = {h * w}")
    flat = np.repeat((np.arange(len(runs)) % 2).astype(bool), runs)
    return flat.reshape((w, h)).T


def render_mask(height: int, width: int, annotations: list[tuple[Any, ...]], where: str) -> np.ndarray:
    """uint8 `(H, W)` Context-59 label map of one image: each annotation `(category id, segmentation[, JSON path])`
    painted in order with the Context-59 label of its category (0 outside the 59), as the Detail API paints
    category ids and mmsegmentation then maps them."""
    check_label_size(height, width, where)
    labels = np.zeros((height, width), dtype=np.uint8)
    for i, (category, segmentation, *path) in enumerate(annotations):
        at = path[0] if path else f"{where}: annotation {i}"
        json_int(category, f"{at}.category_id", 0, MAX_CATEGORY_ID)
        m = decode_rle(segmentation, f"{at}.segmentation")
        if m.shape != labels.shape:
            raise BadValueError(f"{at}: the annotation is {m.shape[0]}x{m.shape[1]}, its image {height}x{width}")
        labels[m] = _LABEL_OF.get(category, 0)
    return labels


def _render_job(payload: tuple[int, int, list[tuple[Any, ...]]], dest: Path, where: str) -> int:
    h, w, anns = payload
    write_png_atomic(dest, render_mask(h, w, anns, where))
    return 1


def _load_json(path_or_bytes: Path | bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer over Python's 4,300 digits
        raise BadValueError(f"{where} is not valid JSON ({exc}); download trainval_merged.json again") from None
    except RecursionError:
        raise BadValueError(f"{where}: its JSON is nested too deep for PASCAL in Detail; download it again") from None
    if not isinstance(data, dict) or not {"images", "annos_segmentation"} <= set(data):
        keys = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise BadValueError(
            f"{where}: expected the PASCAL in Detail format (keys images, annos_segmentation), got {keys}"
        )
    for key in ("images", "annos_segmentation"):
        if not isinstance(data[key], list):
            raise BadValueError(f"{where}: {key} is a {type(data[key]).__name__}, expected a list")
    return data


def _entry(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadValueError(f"{where} is a {type(value).__name__}, expected an object")
    return value


def read_images_and_annotations(
    data: dict[str, Any], json_path: Path
) -> tuple[dict[int, dict[str, Any]], dict[int, list[tuple[int, dict[str, Any], str]]]]:
    """The train/val images of the JSON ({image_id: entry with "stem", "height", "width"}) and each one's
    annotations [(category id, segmentation, JSON path)], every value checked (ids, sizes against the label-map
    bounds, each RLE's size against its image's) with one ValueError naming the file, the JSON path and the value."""
    images: dict[int, dict[str, Any]] = {}
    for i, raw in enumerate(data["images"]):
        at = f"{json_path}: images[{i}]"
        img = _entry(raw, at)
        if img.get("phase") not in ("train", "val"):
            continue
        image_id = json_int(img.get("image_id"), f"{at}.image_id", 0, 2**63 - 1)
        if not isinstance(img.get("file_name"), str):
            raise BadValueError(f"{at}.file_name = {str(img.get('file_name'))[:60]!r}: expected a file name")
        stem = safe_stem(Path(img["file_name"]).stem, f"{at}.file_name")
        height = json_int(img.get("height"), f"{at}.height", 1, MAX_SIDE)
        width = json_int(img.get("width"), f"{at}.width", 1, MAX_SIDE)
        check_label_size(height, width, at)
        images[image_id] = {"stem": stem, "phase": img["phase"], "file_name": img["file_name"], "height": height,
                            "width": width}  # fmt: skip
    anns: dict[int, list[tuple[int, dict[str, Any], str]]] = {i: [] for i in images}
    for j, raw in enumerate(data["annos_segmentation"]):
        at = f"{json_path}: annos_segmentation[{j}]"
        ann = _entry(raw, at)
        image_id = json_int(ann.get("image_id"), f"{at}.image_id", 0, 2**63 - 1)
        if image_id not in anns:
            continue
        category = json_int(ann.get("category_id"), f"{at}.category_id", 0, MAX_CATEGORY_ID)
        segmentation = ann.get("segmentation")
        size = _rle_size(segmentation, f"{at}.segmentation")
        img = images[image_id]
        if size != (img["height"], img["width"]):
            raise BadValueError(
                f"{at}.segmentation.size = {list(size)}: its image {img['file_name']} is {img['height']}x{img['width']}"
            )
        assert isinstance(segmentation, dict)
        counts = segmentation["counts"]
        if not isinstance(counts, (str, list)):
            raise BadValueError(f"{at}.segmentation.counts is a {type(counts).__name__}, expected a string or a list")
        anns[image_id].append((category, segmentation, at))
    return images, anns


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
        raise BadValueError(
            f"{json_path} has {json_path.stat().st_size:,} bytes: not PASCAL Context's trainval_merged.json"
        )
    data = _load_json(json_path, str(json_path))
    images, anns = read_images_and_annotations(data, json_path)
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
        raise MissingFileError(
            f"{WHAT}: {len(missing)} image(s) listed in {json_path} are not in {voc_in.describe()} (first: "
            f"{missing[0]}); use VOCtrainval_03-May-2010.tar (PASCAL VOC 2010)"
        )

    # 2. The masks, rendered in worker processes.
    done = existing_names(ann_dir)

    def mask_jobs():
        for image_id, img in images.items():
            name = f"{img['stem']}.png"
            if name not in done:
                h, w = img["height"], img["width"]
                where = f"{json_path}: image {img['file_name']}"
                # What the job holds: its runs, the label map, one mask and its column-major copy.
                cost = sum(len(seg["counts"]) * 8 for _, seg, _ in anns[image_id]) + 4 * h * w
                yield Job(ann_dir / name, _render_job, (h, w, anns[image_id]), (where,), cost=cost)

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
