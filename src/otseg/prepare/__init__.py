"""`otseg prepare DATASET --src DIR --data-root DIR`: the official downloads -> the layouts otseg reads.

One module per dataset (`voc12`, `context59`, `coco`, `ade20k`) and shared archive/IO helpers (`common`).
Every converter verifies the archives' published checksums (from `otseg/weights/registry.json`) where known,
writes each file atomically, skips finished files on a re-run, converts in worker processes with a progress
bar, and ends by printing the counts it wrote.
"""

from __future__ import annotations

from otseg.errors import BadValueError, UnknownNameError
from otseg.prepare.ade20k import prepare_ade20k
from otseg.prepare.coco import prepare_coco
from otseg.prepare.common import UNFORESEEN_VALUE_ERRORS, PrepareOptions
from otseg.prepare.context59 import prepare_context59
from otseg.prepare.voc12 import prepare_voc12

__all__ = ["DATASETS", "PrepareOptions", "prepare_dataset"]

DATASETS = ("voc12", "context59", "coco", "ade20k")


def prepare_dataset(name: str, opts: PrepareOptions) -> dict[str, int]:
    """Run the converter of dataset `name` (one of `DATASETS`); returns its counts.

    Raises:
        BadValueError: also when a converter meets a value its checks did not foresee (a wrong type, a number out
            of range, memory running out): one line naming the dataset and the downloads, the original chained.
    """
    if name not in DATASETS:
        raise UnknownNameError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    opts.data_root.mkdir(parents=True, exist_ok=True)
    converters = {
        "voc12": prepare_voc12,
        "context59": prepare_context59,
        "coco": prepare_coco,
        "ade20k": prepare_ade20k,
    }
    try:
        return converters[name](opts)
    except (*UNFORESEEN_VALUE_ERRORS, MemoryError) as exc:
        what = "ran out of memory" if isinstance(exc, MemoryError) else "met a value of the wrong type or out of range"
        raise BadValueError(
            f"{name}: converting the downloads in {opts.src} {what} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:120]}); check them or download them again (OTSEG_DEBUG=1 shows where)"
        ) from exc
