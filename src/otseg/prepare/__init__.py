"""`otseg prepare DATASET --src DIR --data-root DIR`: the official downloads -> the layouts otseg reads.

One module per dataset (`voc12`, `context59`, `coco`, `ade20k`) and shared archive/IO helpers (`common`).
Every converter verifies the archives' published checksums (from `otseg/weights/registry.json`) where known,
writes each file atomically, skips finished files on a re-run, converts in worker processes with a progress
bar, and ends by printing the counts it wrote.
"""

from __future__ import annotations

from otseg.prepare.ade20k import prepare_ade20k
from otseg.prepare.coco import prepare_coco
from otseg.prepare.common import PrepareOptions
from otseg.prepare.context59 import prepare_context59
from otseg.prepare.voc12 import prepare_voc12

__all__ = ["DATASETS", "PrepareOptions", "prepare_dataset"]

DATASETS = ("voc12", "context59", "coco", "ade20k")


def prepare_dataset(name: str, opts: PrepareOptions) -> dict[str, int]:
    """Run the converter of dataset `name` (one of `DATASETS`); returns its counts."""
    opts.data_root.mkdir(parents=True, exist_ok=True)
    if name == "voc12":
        return prepare_voc12(opts)
    if name == "context59":
        return prepare_context59(opts)
    if name == "coco":
        return prepare_coco(opts)
    if name == "ade20k":
        return prepare_ade20k(opts)
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
