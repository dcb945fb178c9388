"""Segmentation datasets read from the standard mmsegmentation folder layouts, unchanged (`reference-spec.md` §4.5).

Layouts (`root` may be the folder shown or, where noted, the folder above it):

* ``voc12`` -- PASCAL VOC 2012 + SBD aug, 20 classes, `reduce_zero_label` (background -> ignore)::

      root/VOCdevkit/VOC2012/                    (root may also be VOCdevkit/ or VOC2012/ itself)
          JPEGImages/*.jpg
          SegmentationClass/*.png                 VOC's own masks (palette PNGs, 255 = void)
          SegmentationClassAug/*.png              SBD masks (otseg prepare voc12)
          ImageSets/Segmentation/{train,val}.txt
          ImageSets/Segmentation/trainaug.txt     (the reference's name: SBD's images minus VOC's train and
                                                   val; aug.txt, the same list, is used when it is absent)

  ``train`` = train.txt (SegmentationClass) followed by trainaug.txt (SegmentationClassAug), as the
  reference concatenates them; ``val`` = val.txt (SegmentationClass, 1,449 images).

* ``context59`` -- PASCAL Context 59 classes, `reduce_zero_label`::

      root/VOCdevkit/VOC2010/                    (root may also be VOCdevkit/ or VOC2010/ itself)
          JPEGImages/*.jpg
          SegmentationClassContext/*.png          0 = background, 1..59 (otseg prepare context59)
          ImageSets/SegmentationContext/{train,val}.txt   (or {train,val}.txt directly in VOC2010/,
                                                           where the reference's config looks)

* ``coco_stuff164k`` -- COCO-Stuff 164k, 171 classes, ids 0..170 and 255 (no reduce)::

      root/coco_stuff164k/                       (root may also be coco_stuff164k/ itself)
          images/{train2017,val2017}/*.jpg
          annotations/{train2017,val2017}/*_labelTrainIds.png   (otseg prepare coco)

* ``ade20k`` -- ADE20K-150 (cross-dataset target only), `reduce_zero_label`::

      root/ADEChallengeData2016/{images,annotations}/{training,validation}/

* ``custom`` -- a user folder::

      root/
          classes.txt        one class name per non-empty line; line i (0-based) is class id i
          split.json         optional: {"unseen": ["cat", 3, ...]} -- class names or ids held out as unseen
          images/            *.jpg / *.jpeg / *.png / *.bmp / *.tif / *.tiff / *.webp (RGB or greyscale)
          labels/            <image stem>.png: single-channel (mode L or P) class ids 0..K-1, 255 = ignore
      or, with separate splits, root/train/{images,labels}/ and root/val/{images,labels}/ (classes.txt and
      split.json stay in root). Labels are stored as-is (no reduce_zero_label): 0 is a real class.

Every builder checks the layout up front and raises `FileNotFoundError` naming the missing path and saying
how to create it; every listed image and label must exist. At load time a label value that is neither a
class id (after `reduce_zero_label`) nor 255, an image/label size mismatch, or an unreadable image raises an
error naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from otseg.data.classes import read_class_file
from otseg.data.facts import DATASET_ALIASES, DatasetClasses, dataset_facts
from otseg.data.sample_files import check_label_values, read_image, read_label
from otseg.data.transforms import reduce_zero_label
from otseg.errors import BadValueError, MissingFileError, UnknownNameError

__all__ = [
    "DATASET_BUILDERS",
    "IMAGE_EXTENSIONS",
    "PREPARE_HINTS",
    "SegmentationDataset",
    "build_ade20k",
    "build_coco_stuff164k",
    "build_context59",
    "build_custom",
    "build_dataset",
    "build_voc12",
    "collate_samples",
    "read_custom_classes",
    "read_image",
    "read_label",
    "seed_worker",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# A transform maps (uint8 (H, W, 3) RGB image, (H, W) label or None[, rng]) -> (float32 (3, H', W'), int64 or None).
Transform = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def _prepare_hint(dataset: str, downloads: str) -> str:
    return (
        f"run otseg prepare {dataset} --src DOWNLOADS --data-root ROOT, where DOWNLOADS holds {downloads} (or the "
        "folders they extract to; otseg weights list says where each is published)"
    )


_VOC_HINT = _prepare_hint("voc12", "VOCtrainval_11-May-2012.tar and SBD's benchmark.tgz")
_VOC_AUG_HINT = _VOC_HINT + "; it writes VOC2012/SegmentationClassAug/ and ImageSets/Segmentation/trainaug.txt"
_CONTEXT_HINT = _prepare_hint("context59", "VOCtrainval_03-May-2010.tar and PASCAL Context's trainval_merged.json")
_COCO_HINT = _prepare_hint("coco", "train2017.zip, val2017.zip and stuffthingmaps_trainval2017.zip")
_ADE_HINT = _prepare_hint("ade20k", "ADEChallengeData2016.zip")
_CUSTOM_HINT = (
    "a custom dataset needs ROOT/classes.txt (one class name per line) and ROOT/images/ + ROOT/labels/ "
    "(or ROOT/<split>/images/ + ROOT/<split>/labels/); see otseg.data.datasets' docstring"
)
# How to create each layout, by dataset name (also used by otseg.data.check).
PREPARE_HINTS = {
    "voc12": _VOC_HINT,
    "context59": _CONTEXT_HINT,
    "coco_stuff164k": _COCO_HINT,
    "ade20k": _ADE_HINT,
    "custom": _CUSTOM_HINT,
}


# ---- the dataset -----------------------------------------------------------------------------------------


class SegmentationDataset(Dataset):
    """A list of (image path, label path or None) pairs plus the label convention and a transform.

    `dataset[i]` is a dict:
        "image": float32 `(3, H, W)` tensor (the transform's output; without a transform, the raw 0..255
                 RGB values),
        "label": int64 `(H, W)` tensor (None when the sample has no label file),
        "path": the image path as a str,
        "ori_shape": `(h, w)` of the image as stored on disk.

    Randomness: with `seed` set, sample `i` in epoch `e` is augmented with `default_rng((seed, e, i))` passed
    as `transform(image, label, rng=...)`, so it is reproducible whatever the worker layout. Call
    `set_epoch(e)` before creating each epoch's DataLoader iterator (workers copy the dataset when they
    start, so with `persistent_workers=True` the epoch would never reach them). Without a seed the
    transform's own generator is used; pass `seed_worker` as the DataLoader's `worker_init_fn` so workers
    do not share its state.

    `cache_bytes` > 0 keeps decoded and checked (image, label) arrays in memory, up to that many bytes in all
    (samples past the budget are read from disk each time): for small datasets read many times, where decoding
    costs more than the model (the demo's 64 px world). The cached arrays are read-only; each DataLoader worker
    holds its own copy.
    """

    def __init__(
        self,
        samples: Iterable[tuple[str | Path, str | Path | None]],
        classes: DatasetClasses | int,
        *,
        reduce_zero_label: bool = False,
        transform: Transform | None = None,
        ignore_index: int = 255,
        seed: int | None = None,
        name: str = "",
        cache_bytes: int = 0,
    ) -> None:
        if cache_bytes < 0:
            raise BadValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self.samples: list[tuple[Path, Path | None]] = [
            (Path(img), None if lab is None else Path(lab)) for img, lab in samples
        ]
        if isinstance(classes, int):
            classes = DatasetClasses(name or "dataset", tuple(str(i) for i in range(classes)), ())
        self.classes = classes
        self.name = name or classes.name
        self.reduce_zero_label = reduce_zero_label
        self.transform = transform
        self.ignore_index = ignore_index
        self.seed = seed
        self.epoch = 0
        self.cache_bytes = cache_bytes
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self._cached_bytes = 0

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"SegmentationDataset({self.name!r}, {len(self)} samples, {self.num_classes} classes)"

    def set_epoch(self, epoch: int) -> None:
        """Select the per-sample random streams of `epoch` (only matters with `seed` set)."""
        self.epoch = epoch

    def reseed(self, seed: int) -> None:
        """Give the transform's own generator a fresh seed (used by `seed_worker`)."""
        if self.transform is not None and hasattr(self.transform, "rng"):
            self.transform.rng = np.random.default_rng(seed)

    def load_image(self, index: int) -> np.ndarray:
        """uint8 `(H, W, 3)` RGB image of sample `index`."""
        return read_image(self.samples[index][0])

    def load_label(self, index: int) -> np.ndarray | None:
        """uint8 `(H, W)` label of sample `index` after `reduce_zero_label`, validated; None if unlabelled."""
        path = self.samples[index][1]
        if path is None:
            return None
        label = read_label(path)
        if self.reduce_zero_label:
            label = reduce_zero_label(label, self.ignore_index)
        check_label_values(label, self.num_classes, self.ignore_index, path, self.reduce_zero_label)
        return label.astype(np.uint8, copy=False)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image and label of sample `index` as arrays, with the size check (from memory when cached)."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        image, label = self._read(index)
        size = image.nbytes + (0 if label is None else label.nbytes)
        if self._cached_bytes + size <= self.cache_bytes:
            image.flags.writeable = False  # shared by every later read: a transform must not change it in place
            if label is not None:
                label.flags.writeable = False
            self._cache[index] = (image, label)
            self._cached_bytes += size
        return image, label

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        image = self.load_image(index)
        label = self.load_label(index)
        if label is not None and label.shape != image.shape[:2]:
            img_path, lab_path = self.samples[index]
            raise BadValueError(
                f"size mismatch: image {img_path} is {image.shape[0]}x{image.shape[1]} (HxW) but label "
                f"{lab_path} is {label.shape[0]}x{label.shape[1]}"
            )
        return image, label

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.load(index)
        ori_shape = (int(image.shape[0]), int(image.shape[1]))
        if self.transform is None:
            img_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
            lab_t = None if label is None else torch.from_numpy(label.astype(np.int64))
        elif self.seed is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            img_t, lab_t = self.transform(image, label, rng=rng)
        else:
            img_t, lab_t = self.transform(image, label)
        return {"image": img_t, "label": lab_t, "path": str(self.samples[index][0]), "ori_shape": ori_shape}


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: reseed each worker's transform generator from torch's per-worker seed."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    stack: list[Any] = [info.dataset]
    while stack:  # walk ConcatDataset / Subset wrappers
        ds = stack.pop()
        if isinstance(ds, SegmentationDataset):
            ds.reseed(info.seed)
        stack.extend(getattr(ds, "datasets", []))
        if hasattr(ds, "dataset"):
            stack.append(ds.dataset)


def collate_samples(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of dataset items: images `(B, 3, H, W)`, labels `(B, H, W)` (or None), lists of the rest.

    All images (and labels) in the batch must share one size, as after `TrainTransform`.
    """
    labels = [item["label"] for item in batch]
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "label": None if any(lab is None for lab in labels) else torch.stack(labels),
        "path": [item["path"] for item in batch],
        "ori_shape": [item["ori_shape"] for item in batch],
    }


# ---- layout helpers --------------------------------------------------------------------------------------


def _require_dir(path: Path, what: str, hint: str) -> Path:
    if not path.is_dir():
        raise MissingFileError(f"{what}: missing folder {path}; to create it, {hint}")
    return path


def _require_file(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise MissingFileError(f"{what}: missing file {path}; to create it, {hint}")
    return path


def _names_in(folder: Path) -> set[str]:
    # One directory listing instead of a stat per sample: cheap even for COCO's 118k images.
    with os.scandir(folder) as it:
        return {entry.name for entry in it}


def _require_listed(names: Sequence[str], folder: Path, source: str, hint: str) -> None:
    present = _names_in(folder)
    missing = [n for n in names if n not in present]
    if missing:
        shown = ", ".join(str(folder / n) for n in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise MissingFileError(f"{len(missing)} file(s) listed by {source} are missing: {shown}{more}; {hint}")


def _read_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BadValueError(f"{path} is not a text list of image names ({' '.join(str(e).split())})") from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _check_root(root: str | Path, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"{what}: dataset root {root} does not exist or is not a folder")
    return root


def _find_voc_dir(root: Path, year: str, what: str, hint: str) -> Path:
    """The VOC{year} folder: ROOT/VOCdevkit/VOC{year}, ROOT/VOC{year} or ROOT itself."""
    for cand in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise MissingFileError(
        f"{what}: missing folder {root / 'VOCdevkit' / f'VOC{year}' / 'JPEGImages'} "
        f"(also looked for VOC{year}/JPEGImages and JPEGImages directly under {root}); to create it, {hint}"
    )


def _list_pairs(
    stems: Sequence[str], img_dir: Path, ann_dir: Path, img_suffix: str, ann_suffix: str, source: str, hint: str
) -> list[tuple[Path, Path]]:
    _require_listed([s + img_suffix for s in stems], img_dir, source, "the image folder is incomplete")
    _require_listed([s + ann_suffix for s in stems], ann_dir, source, hint)
    return [(img_dir / (s + img_suffix), ann_dir / (s + ann_suffix)) for s in stems]


def _check_split(split: str, valid: Sequence[str], what: str) -> None:
    if split not in valid:
        raise BadValueError(f"{what}: unknown split {split!r}; valid splits: {', '.join(valid)}")


# ---- builders --------------------------------------------------------------------------------------------


def build_voc12(root: str | Path, split: str, transform: Transform | None = None, **kwargs: Any) -> SegmentationDataset:
    """PASCAL VOC 2012 aug (20 classes, background ignored); `split` is "train" or "val"."""
    what = "PASCAL VOC 2012"
    _check_split(split, ("train", "val"), what)
    voc = _find_voc_dir(_check_root(root, what), "2012", what, _VOC_HINT)
    img_dir = voc / "JPEGImages"
    lists = voc / "ImageSets" / "Segmentation"
    cls_dir = _require_dir(voc / "SegmentationClass", what, _VOC_HINT)
    if split == "val":
        val_list = _require_file(lists / "val.txt", what, _VOC_HINT)
        samples = _list_pairs(_read_list(val_list), img_dir, cls_dir, ".jpg", ".png", str(val_list), _VOC_HINT)
    else:
        train_list = _require_file(lists / "train.txt", what, _VOC_HINT)
        aug_dir = _require_dir(voc / "SegmentationClassAug", what, _VOC_AUG_HINT)
        aug_list = lists / "trainaug.txt"
        if not aug_list.is_file() and (lists / "aug.txt").is_file():
            aug_list = lists / "aug.txt"  # mmseg's converter's name for the same list
        _require_file(aug_list, what, _VOC_AUG_HINT + " (the reference names the list trainaug.txt)")
        samples = _list_pairs(_read_list(train_list), img_dir, cls_dir, ".jpg", ".png", str(train_list), _VOC_HINT)
        samples += _list_pairs(_read_list(aug_list), img_dir, aug_dir, ".jpg", ".png", str(aug_list), _VOC_AUG_HINT)
    return SegmentationDataset(samples, **_facts_of("voc12"), transform=transform, **kwargs)


def build_context59(
    root: str | Path, split: str, transform: Transform | None = None, **kwargs: Any
) -> SegmentationDataset:
    """PASCAL Context 59 classes (background ignored); `split` is "train" or "val"."""
    what = "PASCAL Context"
    _check_split(split, ("train", "val"), what)
    voc = _find_voc_dir(_check_root(root, what), "2010", what, _CONTEXT_HINT)
    ann_dir = _require_dir(voc / "SegmentationClassContext", what, _CONTEXT_HINT)
    list_file = voc / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    if not list_file.is_file() and (voc / f"{split}.txt").is_file():
        list_file = voc / f"{split}.txt"  # where the reference's config points (split relative to VOC2010)
    _require_file(list_file, what, _CONTEXT_HINT)
    samples = _list_pairs(
        _read_list(list_file), voc / "JPEGImages", ann_dir, ".jpg", ".png", str(list_file), _CONTEXT_HINT
    )
    return SegmentationDataset(samples, **_facts_of("context59"), transform=transform, **kwargs)


def _facts_of(key: str) -> dict[str, Any]:
    """The `SegmentationDataset` arguments that dataset `key`'s facts fix: its classes, label reduction, name."""
    facts = dataset_facts(key)
    return {"classes": facts.classes, "reduce_zero_label": facts.pipeline.reduce_zero_label, "name": key}


def _scan_images(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Image files directly in `folder` with one of `suffixes` (case-insensitive), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _paired_by_stem(
    images: Sequence[Path], ann_dir: Path, ann_suffix: str, what: str, hint: str
) -> list[tuple[Path, Path]]:
    names = [p.stem + ann_suffix for p in images]
    _require_listed(names, ann_dir, f"the images in {images[0].parent if images else ann_dir}", hint)
    return [(img, ann_dir / n) for img, n in zip(images, names)]


def build_coco_stuff164k(
    root: str | Path, split: str, transform: Transform | None = None, **kwargs: Any
) -> SegmentationDataset:
    """COCO-Stuff 164k (171 classes, `*_labelTrainIds.png`); `split` is "train" or "val" (train2017 / val2017)."""
    what = "COCO-Stuff 164k"
    _check_split(split, ("train", "val", "train2017", "val2017"), what)
    sub = split if split.endswith("2017") else f"{split}2017"
    root = _check_root(root, what)
    base = root / "coco_stuff164k" if (root / "coco_stuff164k").is_dir() else root
    img_dir = _require_dir(base / "images" / sub, what, _COCO_HINT)
    ann_dir = _require_dir(base / "annotations" / sub, what, _COCO_HINT)
    images = _scan_images(img_dir, (".jpg",))
    if not images:
        raise MissingFileError(f"{what}: no .jpg images in {img_dir}; to fill it, {_COCO_HINT}")
    samples = _paired_by_stem(images, ann_dir, "_labelTrainIds.png", what, _COCO_HINT)
    return SegmentationDataset(samples, **_facts_of("coco_stuff164k"), transform=transform, **kwargs)


def build_ade20k(
    root: str | Path, split: str, transform: Transform | None = None, **kwargs: Any
) -> SegmentationDataset:
    """ADE20K-150 (background ignored); `split` is "train" or "val" (training / validation)."""
    what = "ADE20K"
    _check_split(split, ("train", "val"), what)
    sub = {"train": "training", "val": "validation"}[split]
    root = _check_root(root, what)
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    img_dir = _require_dir(base / "images" / sub, what, _ADE_HINT)
    ann_dir = _require_dir(base / "annotations" / sub, what, _ADE_HINT)
    images = _scan_images(img_dir, (".jpg",))
    if not images:
        raise MissingFileError(f"{what}: no .jpg images in {img_dir}; to fill it, {_ADE_HINT}")
    samples = _paired_by_stem(images, ann_dir, ".png", what, _ADE_HINT)
    return SegmentationDataset(samples, **_facts_of("ade20k"), transform=transform, **kwargs)


_MAX_SPLIT_BYTES = 1 << 20  # split.json lists at most 255 class names


def read_custom_classes(root: str | Path) -> DatasetClasses:
    """Class names (`classes.txt`) and unseen split (`split.json`, optional) of a custom dataset folder."""
    root = _check_root(root, "custom dataset")
    classes_file = _require_file(root / "classes.txt", "custom dataset", _CUSTOM_HINT)
    names = tuple(read_class_file(classes_file))  # UTF-8 (a BOM dropped); empty, long, repeated names refused
    if len(names) > 255:
        raise BadValueError(f"{classes_file}: {len(names)} classes, but ids must fit below the ignore index 255")
    unseen: list[int] = []
    split_file = root / "split.json"
    if split_file.is_file():
        if split_file.stat().st_size > _MAX_SPLIT_BYTES:
            raise BadValueError(f'{split_file} has {split_file.stat().st_size:,} bytes; expected {{"unseen": [names]}}')
        try:
            spec = json.loads(split_file.read_bytes().decode("utf-8-sig"))
        except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, an integer over Python's 4,300 digits
            why = "nested too deep" if isinstance(e, RecursionError) else " ".join(str(e).split())
            raise BadValueError(
                f'{split_file} is not valid JSON ({why}); expected {{"unseen": [names or ids]}}'
            ) from None
        entries = spec.get("unseen", []) if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or set(spec) - {"unseen"} or not isinstance(entries, list):
            raise BadValueError(f'{split_file}: expected an object {{"unseen": [names or ids]}}, got {str(spec)[:80]}')
        for item in entries:
            if isinstance(item, int) and not isinstance(item, bool):
                if not 0 <= item < len(names):
                    raise BadValueError(f"{split_file}: unseen id {item} is outside 0..{len(names) - 1}")
                unseen.append(item)
            elif isinstance(item, str) and item in names:
                unseen.append(names.index(item))
            else:
                raise BadValueError(
                    f"{split_file}: unseen entry {item!r} is neither a class id nor a name in {classes_file}"
                )
        if len(set(unseen)) == len(names):
            raise BadValueError(
                f"{split_file} makes all {len(names)} classes unseen; at least one class must be seen (training "
                "learns from the seen classes' masks)"
            )
    return DatasetClasses("custom", names, tuple(sorted(set(unseen))))


def build_custom(
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    *,
    require_labels: bool = True,
    **kwargs: Any,
) -> SegmentationDataset:
    """A custom folder (see the module docstring); uses `root/<split>/` when it exists, else `root/` itself.

    With `require_labels=False` a missing `labels/` folder gives unlabelled samples (label None), e.g. for
    prediction; images without a label file are still an error when `labels/` exists.
    """
    what = "custom dataset"
    root = _check_root(root, what)
    classes = read_custom_classes(root)
    folder = root / split if (root / split / "images").is_dir() else root
    img_dir = _require_dir(folder / "images", what, _CUSTOM_HINT)
    images = _scan_images(img_dir, IMAGE_EXTENSIONS)
    if not images:
        raise MissingFileError(f"{what}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {img_dir}")
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise BadValueError(f"{what}: several images in {img_dir} share the stem(s) {dup}; labels are matched by stem")
    label_dir = folder / "labels"
    if not label_dir.is_dir() and not require_labels:
        samples: list[tuple[Path, Path | None]] = [(p, None) for p in images]
    else:
        _require_dir(label_dir, what, _CUSTOM_HINT)
        samples = list(_paired_by_stem(images, label_dir, ".png", what, "each image needs labels/<stem>.png"))
    return SegmentationDataset(samples, classes, reduce_zero_label=False, transform=transform, name="custom", **kwargs)


DATASET_BUILDERS: dict[str, Callable[..., SegmentationDataset]] = {
    "voc12": build_voc12,
    "context59": build_context59,
    "coco_stuff164k": build_coco_stuff164k,
    "ade20k": build_ade20k,
    "custom": build_custom,
}


def build_dataset(
    name: str, root: str | Path, split: str, transform: Transform | None = None, **kwargs: Any
) -> SegmentationDataset:
    """Build dataset `name` (a key of `DATASET_BUILDERS`, or voc / context / coco) from `root` for `split`.

    Extra keyword arguments go to `SegmentationDataset` (`seed`, `ignore_index`) or to the builder
    (`require_labels` for custom).
    """
    key = DATASET_ALIASES.get(name, name)
    if key not in DATASET_BUILDERS:
        valid = sorted(DATASET_BUILDERS) + sorted(DATASET_ALIASES)
        raise UnknownNameError(f"unknown dataset {name!r}; valid names: {', '.join(valid)}")
    return DATASET_BUILDERS[key](root, split, transform, **kwargs)
