"""Writers of tiny stand-ins for the official dataset downloads, in their published formats.

Each `make_*` writes a few images into `src` as the archive (`archive=True`: the file name and member layout of
the real download) or as the folder it extracts to, and returns what the converter must produce from it, so
tests can compare every output pixel. Everything is seeded.

* VOC 2012 / 2010: `VOCdevkit/VOC20xx/{JPEGImages, SegmentationClass, ImageSets/Segmentation, Annotations}`
  (VOCtrainval_*.tar);
* SBD: `benchmark_RELEASE/dataset/{cls/*.mat (MATLAB struct GTcls.Segmentation), train.txt, val.txt}`
  (benchmark.tgz), .mat files written with scipy.io.savemat;
* PASCAL Context: `trainval_merged.json` (PASCAL in Detail: images, annos_segmentation with COCO RLE strings);
* COCO: `train2017.zip`, `val2017.zip` (`<split>/<12 digits>.jpg`), `stuffthingmaps_trainval2017.zip`
  (`<split>/<stem>.png`, values 0..181 and 255);
* ADE20K: `ADEChallengeData2016.zip` (`ADEChallengeData2016/{images,annotations}/{training,validation}`).
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from fake_layouts import VOC_PALETTE, fake_label
from PIL import Image

from otseg.data.facts import dataset_facts

__all__ = [
    "encode_rle_string",
    "make_ade20k",
    "make_coco",
    "make_context",
    "make_sbd",
    "make_voc2012",
    "rle_runs",
]

SIZE = (64, 80)


def _jpeg(label: np.ndarray, rng: np.random.Generator) -> bytes:
    lab = label.astype(np.int64)
    base = np.stack([(lab * 37) % 256, (lab * 91 + 60) % 256, (lab * 53 + 120) % 256], -1)
    img = np.clip(base + rng.integers(-10, 11, size=base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png(label: np.ndarray, palette: bool = False) -> bytes:
    im = Image.fromarray(label.astype(np.uint8), "P" if palette else "L")
    if palette:
        im.putpalette(VOC_PALETTE)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _write_tree(files: dict[str, bytes], src: Path, archive: str | None) -> None:
    """`files` (posix paths -> bytes) as a folder tree in `src`, or as the archive `src/archive`."""
    src.mkdir(parents=True, exist_ok=True)
    if archive is None:
        for rel, data in files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
    elif archive.endswith(".zip"):
        with zipfile.ZipFile(src / archive, "w") as zf:
            for rel, data in files.items():
                zf.writestr(rel, data)
    else:
        with tarfile.open(src / archive, "w:gz" if archive.endswith(".tgz") else "w") as tf:
            for rel, data in files.items():
                info = tarfile.TarInfo(rel)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def make_voc2012(src: Path, archive: bool, seed: int = 0) -> dict:
    """VOC 2012 trainval: 4 train, 3 val and 6 other images (SBD's). Returns the stems and masks."""
    rng = np.random.default_rng(seed)
    train = [f"2007_{i:06d}" for i in range(4)]
    val = [f"2007_{i:06d}" for i in range(100, 103)]
    others = [f"2008_{i:06d}" for i in range(6)]
    base = "VOCdevkit/VOC2012/"
    files: dict[str, bytes] = {}
    masks = {}
    for stem in train + val + others:
        lab = fake_label(rng, SIZE, [1, 5, 9, 15, 16, 20], background=0, boundary=255)
        files[f"{base}JPEGImages/{stem}.jpg"] = _jpeg(lab, rng)
        if stem not in others:
            files[f"{base}SegmentationClass/{stem}.png"] = _png(lab, palette=True)
            masks[stem] = lab
    files[f"{base}Annotations/{train[0]}.xml"] = b"<annotation/>"  # not needed: must not be copied
    files[f"{base}ImageSets/Segmentation/train.txt"] = "".join(s + "\n" for s in train).encode()
    files[f"{base}ImageSets/Segmentation/val.txt"] = "".join(s + "\n" for s in val).encode()
    files[f"{base}ImageSets/Segmentation/trainval.txt"] = "".join(s + "\n" for s in train + val).encode()
    _write_tree(files, src, "VOCtrainval_11-May-2012.tar" if archive else None)
    return {"train": train, "val": val, "others": others, "masks": masks, "files": files}


def make_sbd(src: Path, voc: dict, archive: bool, seed: int = 1) -> dict:
    """SBD: .mat masks for 2 VOC train, 1 VOC val and the 6 other images; its train/val lists."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    sbd_train = voc["train"][:2] + voc["others"][:4]
    sbd_val = voc["val"][:1] + voc["others"][4:]
    base = "benchmark_RELEASE/dataset/"
    files: dict[str, bytes] = {}
    masks = {}
    for stem in sbd_train + sbd_val:
        seg = fake_label(rng, SIZE, [2, 7, 12, 15, 19], background=0)  # SBD: no 255 outlines
        buf = io.BytesIO()
        gtcls = {
            "Segmentation": seg,
            "Boundaries": np.zeros((20, 1), dtype=object),
            "CategoriesPresent": np.unique(seg),
        }
        savemat(buf, {"GTcls": gtcls})
        files[f"{base}cls/{stem}.mat"] = buf.getvalue()
        masks[stem] = seg
    files[f"{base}train.txt"] = "".join(s + "\n" for s in sbd_train).encode()
    files[f"{base}val.txt"] = "".join(s + "\n" for s in sbd_val).encode()
    _write_tree(files, src, "benchmark.tgz" if archive else None)
    aug = sorted(set(sbd_train + sbd_val) - set(voc["train"]) - set(voc["val"]))
    return {"masks": masks, "aug": aug}


def rle_runs(mask: np.ndarray) -> list[int]:
    """Run lengths of a bool mask in column-major order, starting with a (possibly empty) run of zeros."""
    flat = mask.T.ravel().astype(np.uint8)
    runs: list[int] = []
    current, n = 0, 0
    for v in flat:
        if v != current:
            runs.append(n)
            current, n = int(v), 0
        n += 1
    runs.append(n)
    return runs


def encode_rle_string(mask: np.ndarray) -> str:
    """COCO's compressed RLE string of a bool mask (6 bits a character, deltas from the third run on)."""
    runs = rle_runs(mask)
    chars = []
    for i, count in enumerate(runs):
        x = count - runs[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def make_context(src: Path, archive: bool, seed: int = 2) -> dict:
    """VOC 2010 (4 train + 3 val + 1 test + 1 unlisted image) and a trainval_merged.json with RLE masks.

    Categories used: 2 (aeroplane), 9 (bag), 284 (person), 458 (wood) of the 59, and 1, 100 outside them
    (background after conversion). Returns the expected label maps (0 = background, 1..59).
    """

    names = dataset_facts("context59").classes.class_names
    expected_label = {2: 1, 9: 2, 284: names.index("person") + 1, 458: 59, 1: 0, 100: 0}
    assert names[0] == "aeroplane" and names[1] == "bag" and names[58] == "wood"
    rng = np.random.default_rng(seed)
    phases = {**{f"2008_{i:06d}": "train" for i in range(4)}, **{f"2010_{i:06d}": "val" for i in range(3)}}
    phases["2010_000900"] = "test"
    files: dict[str, bytes] = {}
    images, annos, expected = [], [], {}
    ann_id = 0
    for k, (stem, phase) in enumerate(sorted(phases.items())):
        h, w = SIZE
        image_id = 100 + k
        images.append({"image_id": image_id, "file_name": f"{stem}.jpg", "phase": phase, "height": h, "width": w})
        painted = np.zeros((h, w), dtype=np.int64)
        for j, cat in enumerate(rng.choice(list(expected_label), size=4, replace=False)):
            m = np.zeros((h, w), dtype=bool)
            y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            m[y0 : y0 + int(rng.integers(8, h // 2)), x0 : x0 + int(rng.integers(8, w // 2))] = True
            m[int(rng.integers(0, h)), int(rng.integers(0, w))] = True  # a stray pixel: short runs
            # One uncompressed RLE (a list of runs) per image, which the format also allows.
            counts: str | list[int] = rle_runs(m) if j == 3 else encode_rle_string(m)
            annos.append({"id": ann_id, "image_id": image_id, "category_id": int(cat),
                          "segmentation": {"size": [h, w], "counts": counts}})  # fmt: skip
            ann_id += 1
            painted[m] = cat
        lab = np.vectorize(lambda c: expected_label[int(c)] if c else 0)(painted).astype(np.uint8)
        files[f"VOCdevkit/VOC2010/JPEGImages/{stem}.jpg"] = _jpeg(lab, rng)
        if phase != "test":
            expected[stem] = lab
    files["VOCdevkit/VOC2010/JPEGImages/2009_000001.jpg"] = _jpeg(np.zeros(SIZE, np.uint8), rng)  # not in the JSON
    categories = [{"category_id": c, "name": f"cat{c}"} for c in sorted(expected_label)]
    merged = {"info": {}, "images": images, "annos_segmentation": annos, "categories": categories, "parts": []}
    _write_tree(files, src, "VOCtrainval_03-May-2010.tar" if archive else None)
    (src / "trainval_merged.json").write_text(json.dumps(merged))
    train = sorted(s for s, p in phases.items() if p == "train")
    val = sorted(s for s, p in phases.items() if p == "val")
    return {"masks": expected, "train": train, "val": val}


def make_coco(src: Path, archive: bool, seed: int = 3) -> dict:
    """COCO 2017: 4 train and 3 val images with stuff-thing maps covering every value 0..181 and 255."""
    rng = np.random.default_rng(seed)
    images: dict[str, bytes] = {}
    maps: dict[str, bytes] = {}
    raw = {}
    all_values = np.array([*range(182), 255], dtype=np.uint8)
    for split, n, offset in (("train2017", 4, 9), ("val2017", 3, 139)):
        for i in range(n):
            stem = f"{offset + i:012d}"
            lab = rng.choice(all_values, size=SIZE).astype(np.uint8)
            lab[: len(all_values) // SIZE[1] + 1].flat[: len(all_values)] = all_values  # every value occurs
            images[f"{split}/{stem}.jpg"] = _jpeg(lab % 171, rng)
            maps[f"{split}/{stem}.png"] = _png(lab)
            raw[(split, stem)] = lab
    if archive:
        for split in ("train2017", "val2017"):
            _write_tree({k: v for k, v in images.items() if k.startswith(split)}, src, f"{split}.zip")
        _write_tree(maps, src, "stuffthingmaps_trainval2017.zip")
    else:  # mmsegmentation's unpacked layout: images/<split>/, annotations/<split>/
        _write_tree({f"coco_stuff164k/images/{k}": v for k, v in images.items()}, src, None)
        _write_tree({f"coco_stuff164k/annotations/{k}": v for k, v in maps.items()}, src, None)
    return {"raw": raw}


def make_ade20k(src: Path, archive: bool, seed: int = 4) -> dict:
    """ADEChallengeData2016: 3 training and 2 validation images, labels 0..150."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {"ADEChallengeData2016/objectInfo150.txt": b"Idx\tRatio\tTrain\tVal\tName\n"}
    labels = {}
    for sub, n in (("training", 3), ("validation", 2)):
        for i in range(n):
            stem = f"ADE_{'train' if sub == 'training' else 'val'}_{i + 1:08d}"
            lab = fake_label(rng, SIZE, [1, 13, 77, 150], background=0)
            files[f"ADEChallengeData2016/images/{sub}/{stem}.jpg"] = _jpeg(lab, rng)
            files[f"ADEChallengeData2016/annotations/{sub}/{stem}.png"] = _png(lab)
            labels[(sub, stem)] = lab
    _write_tree(files, src, "ADEChallengeData2016.zip" if archive else None)
    return {"labels": labels, "files": files}
