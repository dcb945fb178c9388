"""`otseg check-data`: is the dataset a preset reads there, complete and in the right id convention?

For a custom folder (`--dataset custom`) it also lists the classes and the unseen split, and reports the sampled
images' short side: far from the 512 px the default pipeline rescales to, it warns and names the `--set data.*`
settings that size the pipeline for the images.

Checks, per split the preset reads: the folders and list files, that every listed (or found) image has its
label and every label its image, a sample of label maps against the class range (after `reduce_zero_label`
where the dataset uses it), and the counts against the official ones. Structural problems are errors (the
dataset is not usable); counts that differ from the official ones are warnings (a subset or a tiny test
set is usable). Every problem is one line with its fix. `otseg train` and `otseg eval` run the same check at
start-up (`require_usable`); it lists folders and reads a few labels, so it costs well under a second.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from otseg.config import ModelConfig
from otseg.data.datasets import PREPARE_HINTS, build_dataset, read_custom_classes
from otseg.data.facts import CUSTOM_PIPELINE, DATASET_ALIASES, find_dataset_facts
from otseg.errors import BadValueError
from otseg.image_io import IMAGE_FORMATS

__all__ = [
    "DataCheck",
    "Problem",
    "check_dataset",
    "check_preset",
    "require_usable",
]


@dataclass(frozen=True)
class Problem:
    """One finding: an error makes the dataset unusable; a warning does not."""

    severity: Literal["error", "warning"]
    message: str  # one line, with the fix


@dataclass
class DataCheck:
    """The result of checking one dataset at one root."""

    dataset: str
    root: Path
    splits: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts worth showing that are no problem

    @property
    def usable(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    @property
    def errors(self) -> list[str]:
        return [p.message for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[str]:
        return [p.message for p in self.problems if p.severity == "warning"]

    def error(self, message: str) -> None:
        self.problems.append(Problem("error", message))

    def warn(self, message: str) -> None:
        self.problems.append(Problem("warning", message))

    def report(self) -> str:
        """Counts against the official ones, then one line per problem."""
        lines = [f"{self.dataset} at {self.root}:"]
        for split in self.splits:
            expected = _official_count(self.dataset, split)
            got = self.counts.get(split)
            got_s = "not counted (see the errors below)" if got is None else f"{got:,} images"
            exp_s = f" (official: {expected:,})" if expected is not None else ""
            lines.append(f"  {split}: {got_s}{exp_s}")
        lines += [f"  {note}" for note in self.notes]
        lines += [f"  {p.severity}: {p.message}" for p in self.problems]
        lines.append("  usable" if self.usable else f"  NOT usable: {len(self.errors)} error(s)")
        return "\n".join(lines)


def _official_count(dataset: str, split: str) -> int | None:
    """Images in `split` of the official release (`otseg.data.facts`), None where unknown."""
    facts = find_dataset_facts(dataset)
    return facts.official_counts.get(split) if facts is not None else None


def _prepare_fix(dataset: str, root: Path) -> str:
    return PREPARE_HINTS[dataset].replace("ROOT", str(root))


def _first_existing(*candidates: Path) -> Path:
    return next((c for c in candidates if c.is_dir()), candidates[0])


def _names(folder: Path) -> set[str]:
    with os.scandir(folder) as it:
        return {e.name for e in it if not e.name.startswith(".")}


def _structure(dataset: str, root: Path, splits: tuple[str, ...], check: DataCheck) -> None:
    """Errors for missing folders and lists (each one line); warnings for known-but-harmless oddities."""
    fix = _prepare_fix(dataset, root)

    def need_dir(path: Path) -> bool:
        if not path.is_dir():
            check.error(f"missing folder {path}; {fix}")
            return False
        return True

    def need_file(path: Path, extra: str = "") -> bool:
        if not path.is_file():
            check.error(f"missing list {path}{extra}; {fix}")
            return False
        return True

    if dataset in ("voc12", "context59"):
        year = "2012" if dataset == "voc12" else "2010"
        voc = _first_existing(root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root)
        if not (voc / "JPEGImages").is_dir():
            voc = root / "VOCdevkit" / f"VOC{year}"
        need_dir(voc / "JPEGImages")
        if dataset == "voc12":
            lists = voc / "ImageSets" / "Segmentation"
            need_dir(voc / "SegmentationClass")
            for split in splits:
                need_file(lists / f"{split}.txt")
            if "train" in splits:
                need_dir(voc / "SegmentationClassAug")
                aug = lists / "trainaug.txt"
                if not aug.is_file() and (lists / "aug.txt").is_file():
                    aug = lists / "aug.txt"
                if need_file(aug, " (the SBD aug list)") and (lists / "train.txt").is_file():
                    train = set((lists / "train.txt").read_text().split())
                    twice = train & set(aug.read_text().split())
                    if twice:
                        check.warn(
                            f"{len(twice):,} images of train.txt are also in {aug} (mmsegmentation's 10,582-image "
                            f"trainaug.txt?): they are trained on twice per epoch; otseg prepare voc12 writes "
                            f"{aug.name} without them ({fix})"
                        )
        else:
            need_dir(voc / "SegmentationClassContext")
            for split in splits:
                lst = voc / "ImageSets" / "SegmentationContext" / f"{split}.txt"
                if not lst.is_file() and (voc / f"{split}.txt").is_file():
                    continue
                need_file(lst)
    elif dataset == "coco_stuff164k":
        base = root / "coco_stuff164k" if (root / "coco_stuff164k").is_dir() else root
        for split in splits:
            img, ann = base / "images" / f"{split}2017", base / "annotations" / f"{split}2017"
            if need_dir(img) & need_dir(ann):
                _unpaired_labels(img, ann, "_labelTrainIds.png", check, fix)
    elif dataset == "ade20k":
        base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
        for split in splits:
            sub = {"train": "training", "val": "validation"}[split]
            img, ann = base / "images" / sub, base / "annotations" / sub
            if need_dir(img) & need_dir(ann):
                _unpaired_labels(img, ann, ".png", check, fix)


def _unpaired_labels(img_dir: Path, ann_dir: Path, suffix: str, check: DataCheck, fix: str) -> None:
    """Labels without an image (images without a label are caught by the dataset builder)."""
    stems = {n[:-4] for n in _names(img_dir) if n.endswith(".jpg")}
    orphans = sorted(n for n in _names(ann_dir) if n.endswith(suffix) and n[: -len(suffix)] not in stems)
    if orphans:
        check.warn(f"{len(orphans):,} label(s) in {ann_dir} have no image in {img_dir} (first: {orphans[0]}); {fix}")


# A custom folder's images whose short side is further than this factor from the default pipeline's short side
# (CUSTOM_PIPELINE.img_scale) get a warning: the rescale before the crop would zoom or shrink them that much.
_SCALE_WARN_FACTOR = 2.0


def _custom_notes(root: Path, sizes: list[tuple[int, int]], check: DataCheck) -> None:
    """Classes, split and image sizes of a custom folder; a warning when the default pipeline does not fit them."""
    try:
        classes = read_custom_classes(root)
    except (OSError, ValueError):
        return  # the dataset builder has reported it as an error
    unseen = ", ".join(classes.unseen_names) or "none (every class is seen: fully supervised)"
    check.notes.append(f"classes: {classes.num_classes}; unseen: {unseen}")
    if not sizes:
        return
    short = statistics.median(min(w, h) for w, h in sizes)
    lo, hi = min(min(w, h) for w, h in sizes), max(min(w, h) for w, h in sizes)
    span = f"{lo}" if lo == hi else f"{lo}-{hi} (median {short:g})"
    check.notes.append(f"image short side: {span} px in {len(sizes)} sampled image(s)")
    target = min(CUSTOM_PIPELINE.img_scale)
    if short * _SCALE_WARN_FACTOR < target or short > _SCALE_WARN_FACTOR * target:
        s = int(short)
        check.warn(
            f"the default training pipeline rescales images to a short side of about {target} px (img_scale "
            f"{CUSTOM_PIPELINE.img_scale[0]}x{CUSTOM_PIPELINE.img_scale[1]}, x{target / short:.2g} here) before "
            f"cropping the model's input size; for images of about {s} px train with --set data.img_scale={s},{s} "
            f"and a model input of at most that size (--set vision.image_size=N, crop_size, test_short_side; "
            f"docs/custom-data.md)"
        )


def check_dataset(
    dataset: str, root: str | Path, splits: tuple[str, ...] = ("train", "val"), sample: int = 6
) -> DataCheck:
    """Check dataset `dataset` (voc12, context59, coco_stuff164k, ade20k, or custom: a user folder) at `root` for
    `splits`.

    `sample` label maps per split, spread over the split, are read and checked against the class range (for a
    custom folder the images' sizes are read too, from their headers).
    """
    root = Path(root).expanduser()
    check = DataCheck(dataset, root, tuple(splits))
    if not root.is_dir():
        check.error(f"data root {root} does not exist; {_prepare_fix(dataset, root)}")
        return check
    _structure(dataset, root, check.splits, check)
    if not check.usable:
        return check
    sizes: list[tuple[int, int]] = []  # (width, height) of sampled custom images
    for split in check.splits:
        try:
            ds = build_dataset(dataset, root, split)
        except (FileNotFoundError, ValueError) as exc:
            check.error(f"{split}: {' '.join(str(exc).split())}")
            continue
        check.counts[split] = len(ds)
        expected = _official_count(dataset, split)
        if expected is not None and len(ds) != expected:
            check.warn(f"{split} has {len(ds):,} images, the official set {expected:,} (a subset is usable; for "
                       f"the paper's numbers, {_prepare_fix(dataset, root)} with the full downloads)")  # fmt: skip
        if len(ds) == 0:
            check.error(f"{split} lists no images; {_prepare_fix(dataset, root)}")
            continue
        step = max(1, len(ds) // max(1, sample))
        for i in list(range(0, len(ds), step))[:sample]:
            if dataset == "custom":
                try:
                    with Image.open(ds.samples[i][0], formats=IMAGE_FORMATS) as im:
                        sizes.append(im.size)
                except (OSError, ValueError):  # ValueError: e.g. PIL's guard against a PNG text-chunk bomb
                    pass  # an unreadable image: training reports it, naming the file
            try:
                ds.load_label(i)
            except ValueError as exc:
                check.error(f"{' '.join(str(exc).split())}; the labels are not in the layout's id convention: "
                            f"{_prepare_fix(dataset, root)}")  # fmt: skip
            except OSError as exc:  # the readers name the file: missing, corrupt, over the cap
                check.error(f"{' '.join(str(exc).split())}; {_prepare_fix(dataset, root)}")
    if dataset == "custom":
        _custom_notes(root, sizes, check)
    return check


def check_preset(cfg: ModelConfig, root: str | Path, sample: int = 6) -> DataCheck:
    """`check_dataset` for the dataset and splits a preset's model config `cfg` reads."""
    # Cross-dataset presets (source-to-target) only evaluate on the target: its val split.
    splits = ("val",) if "-to-" in cfg.name else ("train", "val")
    return check_dataset(cfg.dataset, root, splits, sample=sample)


def require_usable(
    dataset: str, root: str | Path, splits: tuple[str, ...], sample: int = 2, verbose: bool = True
) -> DataCheck:
    """The start-up check of train / eval: prints warnings (if `verbose`); raises ValueError (one line) on the
    first error."""
    dataset = DATASET_ALIASES.get(dataset, dataset)
    if find_dataset_facts(dataset) is None:  # custom datasets: their builder checks them
        return DataCheck(dataset, Path(root), splits)
    check = check_dataset(dataset, root, splits, sample=sample)
    for message in check.warnings if verbose else ():
        print(f"data warning: {message}")
    if not check.usable:
        more = len(check.errors) - 1
        tail = f" (and {more} more problem(s): otseg check-data --data-root {root} lists them)" if more else ""
        raise BadValueError(f"{dataset} data at {root}: {check.errors[0]}{tail}")
    return check
