"""`otseg prepare coco`: COCO 2017 images + COCO-Stuff's label maps -> the layout `build_coco_stuff164k` reads.

Inputs in --src: `train2017.zip` and `val2017.zip` (or the `train2017/` and `val2017/` folders of JPEGs) and
`stuffthingmaps_trainval2017.zip` (or the folder holding its `train2017/` and `val2017/` folders of PNGs).

The stuff-thing maps hold COCO's category id minus one: 0..90 things, 91..181 stuff, 255 unlabelled. Eleven
thing ids are never used (COCO ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91, i.e. values 11, 25, 28, 29,
44, 65, 67, 68, 70, 82, 90). The 171 used values map, in increasing order, to the train ids 0..170 (the order
of the reference's class list), and every other value to 255, as mmsegmentation's `coco_stuff164k.py` does.

Writes, under DATA_ROOT/coco_stuff164k: `images/{train2017,val2017}/*.jpg` and
`annotations/{train2017,val2017}/<stem>_labelTrainIds.png` (mode L).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from otseg.data.facts import dataset_facts
from otseg.errors import BadValueError
from otseg.prepare.common import (
    Input,
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
    write_png_atomic,
)

__all__ = ["UNUSED_STUFF_THING_VALUES", "map_cost", "prepare_coco", "stuff_thing_lut"]

WHAT = "otseg prepare coco"
SPLITS = ("train2017", "val2017")
UNUSED_STUFF_THING_VALUES = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
_NUM_VALUES = 182


def stuff_thing_lut() -> np.ndarray:
    """uint8 `(256,)` lookup: stuff-thing map value -> train id (0..170), unused values and the rest -> 255."""
    lut = np.full(256, 255, dtype=np.uint8)
    used = [v for v in range(_NUM_VALUES) if v not in UNUSED_STUFF_THING_VALUES]
    lut[used] = np.arange(len(used), dtype=np.uint8)
    return lut


assert _NUM_VALUES - len(UNUSED_STUFF_THING_VALUES) == dataset_facts("coco_stuff164k").classes.num_classes


def map_cost(data: bytes, where: str) -> int:
    """The bytes converting a COCO-Stuff map costs (the file, the decoded map, its mapped copy), from its header,
    after its size was checked against the label-map bounds (`check_label_size`); nothing is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own bound decides, below
            with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
                height, width = im.height, im.width
    except Image.DecompressionBombError as exc:  # PIL's own limit (about 179 million pixels), above ours
        raise BadValueError(f"{where}: over the limit of a label map ({' '.join(str(exc).split())})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadValueError(f"{where}: not a COCO-Stuff label map ({' '.join(str(exc).split())})") from None
    check_label_size(height, width, where)
    return len(data) + 2 * height * width


def _convert_map(data: bytes, dest: Path, where: str) -> int:
    map_cost(data, where)  # the declared size, before decoding
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            im.load()
            if im.mode not in ("L", "P"):
                raise BadValueError(f"mode {im.mode}, expected a single-channel map")
            values = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadValueError(f"{where}: not a COCO-Stuff label map ({exc})") from None
    write_png_atomic(dest, stuff_thing_lut()[values])
    return 1


def _first_suffix(folder: Path) -> str:
    with os.scandir(folder) as it:
        for e in it:
            if e.is_file() and not e.name.startswith("."):
                return Path(e.name).suffix.lower()
    return ""


def _find_images(src: Path, split: str) -> Input:
    return find_input(
        src, (f"{split}.zip",), f"{split}/", "", what=WHAT, entry=f"coco-{split}",
        accept=lambda d: _first_suffix(d) == ".jpg",
    )  # fmt: skip


def _find_maps(src: Path) -> Input:
    return find_input(
        src, ("stuffthingmaps_trainval2017.zip",), "", "val2017", what=WHAT, entry="coco-stuffthingmaps",
        accept=lambda d: _first_suffix(d / "val2017") == ".png",
    )  # fmt: skip


def prepare_coco(opts: PrepareOptions) -> dict[str, int]:
    """Convert the downloads in `opts.src` into `opts.data_root`; returns the counts written (see module doc)."""
    image_inputs = {split: _find_images(opts.src, split) for split in SPLITS}
    maps_in = _find_maps(opts.src)
    if opts.verify_checksums:
        for inp in (*image_inputs.values(), maps_in):
            note = verify_checksum(inp, opts.data_root, opts.progress)
            if note:
                print(note)
    base = opts.data_root / "coco_stuff164k"
    counts: dict[str, int] = {}
    for split in SPLITS:
        img_dir, ann_dir = base / "images" / split, base / "annotations" / split
        for folder in (img_dir, ann_dir):
            remove_stale_temporaries(folder)
        have = existing_names(img_dir)

        def image_jobs(split: str = split, have: set[str] = have, img_dir: Path = img_dir):
            for m in image_inputs[split].members(("",)):
                name = m.rel.rsplit("/", 1)[-1]
                if not name.lower().endswith(".jpg") or name in have:
                    continue
                safe_stem(name[:-4], f"{image_inputs[split].describe()}: {m.rel}")
                yield copy_job(m, img_dir / name)

        run_jobs(image_jobs(), 0, f"COCO {split} images", opts.progress)
        done = existing_names(ann_dir)

        def map_jobs(split: str = split, done: set[str] = done, ann_dir: Path = ann_dir):
            for m in maps_in.members((f"{split}/",)):
                name = m.rel.rsplit("/", 1)[-1]
                if not name.endswith(".png") or name.endswith("_labelTrainIds.png") or "/" in m.rel[len(split) + 1 :]:
                    continue
                stem = safe_stem(name[:-4], f"{maps_in.describe()}: {m.rel}")
                out_name = f"{stem}_labelTrainIds.png"
                if out_name not in done:
                    data, where = m.read(), f"{maps_in.describe()}: {m.rel}"
                    yield Job(ann_dir / out_name, _convert_map, data, (where,), cost=map_cost(data, where))

        run_jobs(map_jobs(), opts.workers, f"COCO-Stuff {split} maps", opts.progress)
        images = {n[:-4] for n in existing_names(img_dir) if n.endswith(".jpg")}
        labels = {n[: -len("_labelTrainIds.png")] for n in existing_names(ann_dir) if n.endswith("_labelTrainIds.png")}
        counts[f"{split}_images"], counts[f"{split}_labels"] = len(images), len(labels)
        counts[f"{split}_unpaired"] = len(images ^ labels)
    print(
        f"coco: wrote {base}: train2017 {plural(counts['train2017_images'], 'image')} / "
        f"{plural(counts['train2017_labels'], 'label map')} (official: 118,287), val2017 "
        f"{plural(counts['val2017_images'], 'image')} / {plural(counts['val2017_labels'], 'label map')} "
        "(official: 5,000)"
    )
    for split in SPLITS:
        if counts[f"{split}_unpaired"]:
            print(f"coco: warning: {counts[f'{split}_unpaired']} {split} image(s) and label maps do not pair up")
    return counts
