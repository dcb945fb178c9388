"""`otseg prepare voc12`: PASCAL VOC 2012 + the SBD augmented masks -> the layout `build_voc12` reads.

Inputs in --src: `VOCtrainval_11-May-2012.tar` (or its `VOCdevkit/VOC2012` folder) and SBD's `benchmark.tgz`
(or its `benchmark_RELEASE/dataset` folder: `cls/*.mat`, `train.txt`, `val.txt`).

Writes, under DATA_ROOT/VOCdevkit/VOC2012:

* `JPEGImages/`, `SegmentationClass/` (VOC's palette masks, unchanged) and `ImageSets/Segmentation/*.txt`;
* `SegmentationClassAug/<stem>.png`: each SBD `cls/<stem>.mat` (MATLAB struct `GTcls`, field `Segmentation`:
  class ids 0..20, 0 = background) as a mode-L PNG of the same ids, as mmsegmentation's `voc_aug.py` does;
* `ImageSets/Segmentation/trainaug.txt` (and the same list as `aug.txt`): the SBD train and val images minus
  VOC's train and val images (the 1,464 VOC train images are read from `train.txt` with VOC's own masks, and
  the 1,449 val images must never be trained on). With the real downloads: 9,118 images, which with
  `train.txt` make mmsegmentation's 10,582 training images. mmsegmentation's own `trainaug.txt` is the
  10,582-image union; read with `train.txt` as the reference does, it would repeat the 1,464 train images.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

from otseg.errors import BadValueError, MissingExtraError, MissingFileError
from otseg.prepare.common import (
    MAX_LABEL_PIXELS,
    MAX_LABEL_SIDE,
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
from otseg.prepare.matlab import MatLimits, MatTooLarge, check_mat_sizes

__all__ = ["prepare_voc12", "read_sbd_mat", "sbd_mat_cost"]

WHAT = "otseg prepare voc12"
_VOC_LISTS = ("train.txt", "val.txt", "trainval.txt")
_MAT_LIMITS = MatLimits(max_side=MAX_LABEL_SIDE, max_elements=MAX_LABEL_PIXELS)


def sbd_mat_cost(data: bytes, name: str) -> int:
    """The bytes reading an SBD `.mat` costs (the file, its variables decompressed, the label map), after its
    headers were checked against the label-map bounds; ValueError naming `name` and the array otherwise."""
    try:
        decompressed = check_mat_sizes(data, _MAT_LIMITS)
    except MatTooLarge as exc:
        raise BadValueError(f"{name}: {exc}") from None
    except ValueError as exc:
        raise BadValueError(f"{name}: not an SBD class annotation (MATLAB struct GTcls.Segmentation): {exc}") from None
    return len(data) + 3 * decompressed


def read_sbd_mat(data: bytes, name: str) -> np.ndarray:
    """The uint8 `(H, W)` class map of an SBD `cls/*.mat` file (`GTcls.Segmentation`, ids 0..20). Its headers are
    checked first (`sbd_mat_cost`): nothing it declares beyond the label-map bounds is decompressed or allocated."""
    loadmat = _loadmat()
    sbd_mat_cost(data, name)
    try:
        mat = loadmat(io.BytesIO(data))
        seg = np.asarray(mat["GTcls"]["Segmentation"][0, 0])
    except (ValueError, KeyError, IndexError, TypeError, OSError) as exc:
        reason = " ".join(str(exc).split())
        raise BadValueError(
            f"{name}: not an SBD class annotation (MATLAB struct GTcls.Segmentation): {reason}"
        ) from None
    if seg.ndim != 2 or seg.size == 0:
        raise BadValueError(f"{name}: GTcls.Segmentation has shape {seg.shape}, expected a 2-D map")
    bad = sorted({int(v) for v in np.unique(seg)} - set(range(21)) - {255})
    if bad:
        raise BadValueError(f"{name}: GTcls.Segmentation holds values {bad[:5]} outside the VOC ids 0..20")
    return seg.astype(np.uint8)


def _loadmat() -> Callable[..., dict[str, Any]]:
    """scipy's MATLAB reader (an optional dependency: only SBD's .mat files need it)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise MissingExtraError(
            "reading SBD's .mat files needs scipy: pip install scipy (or pip install -e '.[prepare]')"
        ) from None
    return loadmat


def _convert_mat(data: bytes, dest, name: str) -> int:
    write_png_atomic(dest, read_sbd_mat(data, name))
    return 1


def _read_list(data: bytes) -> list[str]:
    return [line.split()[0] for line in data.decode("utf-8").splitlines() if line.strip()]


def prepare_voc12(opts: PrepareOptions) -> dict[str, int]:
    """Convert the downloads in `opts.src` into `opts.data_root`; returns the counts written (see module doc)."""
    _loadmat()  # fail before any work when scipy is missing
    voc_in = find_input(
        opts.src, ("VOCtrainval_11-May-2012.tar",), "VOC2012/", "JPEGImages", what=WHAT, entry="voc2012-trainval"
    )
    sbd_in = find_input(opts.src, ("benchmark.tgz",), "dataset/", "cls", what=WHAT, entry="sbd-benchmark")
    for inp in (voc_in, sbd_in):
        if opts.verify_checksums:
            note = verify_checksum(inp, opts.data_root, opts.progress)
            if note:
                print(note)
    out = opts.data_root / "VOCdevkit" / "VOC2012"
    folders = {k: out / k for k in ("JPEGImages", "SegmentationClass", "SegmentationClassAug")}
    lists_dir = out / "ImageSets" / "Segmentation"
    for folder in (*folders.values(), lists_dir):
        remove_stale_temporaries(folder)

    # 1. VOC 2012: images, masks, lists (one pass over the tar).
    done = {k: existing_names(v) for k, v in folders.items()}
    voc_lists: dict[str, list[str]] = {}

    def voc_jobs():
        for m in voc_in.members(("JPEGImages/", "SegmentationClass/", "ImageSets/Segmentation/")):
            folder, _, name = m.rel.partition("/")
            if folder == "ImageSets":
                name = m.rel.rsplit("/", 1)[-1]
                if name in _VOC_LISTS:
                    voc_lists[name] = _read_list(m.read())
                continue
            stem, dot, ext = name.rpartition(".")
            if not dot or ext not in ("jpg", "png"):
                continue
            safe_stem(stem, f"{voc_in.describe()}: {m.rel}")
            if name in done[folder]:
                continue
            yield copy_job(m, folders[folder] / name)

    run_jobs(voc_jobs(), 0, "VOC2012 images and masks", opts.progress)
    for name in ("train.txt", "val.txt"):
        if name not in voc_lists:
            raise MissingFileError(f"{WHAT}: {voc_in.describe()} has no ImageSets/Segmentation/{name}")
    for name, stems in voc_lists.items():
        write_list_atomic(lists_dir / name, stems, f"{voc_in.describe()}: ImageSets/Segmentation/{name}")

    # 2. SBD: .mat -> PNG in worker processes, and its lists.
    sbd_lists: dict[str, list[str]] = {}
    aug_done = existing_names(folders["SegmentationClassAug"])
    mats: list[str] = []

    def sbd_jobs():
        for m in sbd_in.members(("cls/", "train.txt", "val.txt")):
            if m.rel in ("train.txt", "val.txt"):
                sbd_lists[m.rel] = _read_list(m.read())
                continue
            name = m.rel.rsplit("/", 1)[-1]
            if not name.endswith(".mat"):
                continue
            stem = safe_stem(name[: -len(".mat")], f"{sbd_in.describe()}: {m.rel}")
            mats.append(stem)
            if f"{stem}.png" in aug_done:
                continue
            data, where = m.read(), f"{sbd_in.describe()}: {m.rel}"
            yield Job(folders["SegmentationClassAug"] / f"{stem}.png", _convert_mat, data, (where,),
                      cost=sbd_mat_cost(data, where))  # fmt: skip

    run_jobs(sbd_jobs(), opts.workers, "SBD masks (.mat -> PNG)", opts.progress)
    for name in ("train.txt", "val.txt"):
        if name not in sbd_lists:
            raise MissingFileError(f"{WHAT}: {sbd_in.describe()} has no dataset/{name} (SBD's split list)")

    # 3. The aug list: SBD train + val, minus VOC train and val.
    voc_train, voc_val = voc_lists["train.txt"], voc_lists["val.txt"]
    aug = sorted(set(sbd_lists["train.txt"] + sbd_lists["val.txt"]) - set(voc_train) - set(voc_val))
    have_mat, have_img = set(mats), existing_names(folders["JPEGImages"])
    no_mask = [s for s in aug if s not in have_mat]
    no_img = [s for s in aug if f"{s}.jpg" not in have_img]
    if no_mask or no_img:
        s = (no_mask or no_img)[0]
        raise MissingFileError(
            f"{WHAT}: {len(no_mask)} SBD-listed image(s) have no cls/*.mat and {len(no_img)} no VOC2012 JPEG "
            f"(first: {s}); the SBD and VOC downloads do not belong together or are incomplete"
        )
    sbd_source = f"{sbd_in.describe()}: train.txt and val.txt"
    write_list_atomic(lists_dir / "trainaug.txt", aug, sbd_source)
    write_list_atomic(lists_dir / "aug.txt", aug, sbd_source)

    counts = {
        "images": len(have_img),
        "voc_masks": len(existing_names(folders["SegmentationClass"])),
        "aug_masks": len(existing_names(folders["SegmentationClassAug"])),
        "train": len(voc_train) + len(aug),
        "train_voc": len(voc_train),
        "train_aug": len(aug),
        "val": len(voc_val),
    }
    print(
        f"voc12: wrote {out}: {plural(counts['images'], 'image')}, {plural(counts['voc_masks'], 'VOC mask')}, "
        f"{plural(counts['aug_masks'], 'SBD mask')} in SegmentationClassAug; train = {counts['train_voc']:,} "
        f"(train.txt) + {counts['train_aug']:,} (trainaug.txt) = {counts['train']:,} images (official: 10,582), "
        f"val = {counts['val']:,} (official: 1,449)"
    )
    return counts
