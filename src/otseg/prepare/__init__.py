"""`otseg prepare DATASET --src DIR --data-root DIR`: the official downloads -> the layouts otseg reads.

One module per dataset (`voc12`, `context59`, `coco`, `ade20k`) and shared archive/IO helpers (`common`).
Every converter verifies the archives' published checksums (from `otseg/weights/registry.json`) where known,
writes each file atomically, skips finished files on a re-run, converts in worker processes with a progress
bar, and ends by printing the counts it wrote.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from otseg.prepare.ade20k import prepare_ade20k
from otseg.prepare.coco import prepare_coco
from otseg.prepare.common import UNFORESEEN_VALUE_ERRORS, PrepareOptions
from otseg.prepare.context59 import prepare_context59
from otseg.prepare.voc12 import prepare_voc12

__all__ = ["DATASETS", "PrepareOptions", "add_prepare_parser", "prepare_dataset"]

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


def cmd_prepare(args: argparse.Namespace) -> int:
    opts = PrepareOptions(
        src=Path(args.src).expanduser(),
        data_root=Path(args.data_root).expanduser(),
        workers=args.workers if args.workers is not None else min(8, os.cpu_count() or 1),
        progress=not args.no_progress,
        verify_checksums=not args.skip_checksum,
    )
    try:
        prepare_dataset(args.dataset, opts)
    except (*UNFORESEEN_VALUE_ERRORS, MemoryError) as exc:
        # A converter met a value its checks did not foresee: one line naming what was being read, not a
        # traceback (OTSEG_DEBUG=1 shows it).
        if os.environ.get("OTSEG_DEBUG", "") not in ("", "0"):
            raise
        what = "ran out of memory" if isinstance(exc, MemoryError) else "met a value of the wrong type or out of range"
        raise ValueError(
            f"{args.dataset}: converting the downloads in {opts.src} {what} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:120]}); check them or download them again (OTSEG_DEBUG=1 shows where)"
        ) from None
    return 0


def add_prepare_parser(sub: argparse._SubParsersAction) -> None:
    """Register `otseg prepare`."""
    p = sub.add_parser(
        "prepare",
        help="convert the official dataset downloads (archives or extracted folders) into the layouts otseg reads",
        description="Convert the official downloads in --src into --data-root. voc12: VOCtrainval_11-May-2012.tar "
        "+ SBD benchmark.tgz; context59: VOCtrainval_03-May-2010.tar + trainval_merged.json; coco: train2017.zip + "
        "val2017.zip + stuffthingmaps_trainval2017.zip; ade20k: ADEChallengeData2016.zip. Each may also be the "
        "folder the archive extracts to. Re-running skips finished files (an interrupted run resumes).",
    )
    p.add_argument("dataset", choices=DATASETS, help=f"the dataset to prepare: {', '.join(DATASETS)}")
    p.add_argument("--src", required=True, help="folder holding the downloads (archives or extracted folders)")
    p.add_argument("--data-root", required=True, help="output root (the --data-root of train / eval / check-data)")
    p.add_argument("--workers", type=int, help="conversion processes (default: min(8, CPUs); 0 = this process)")
    p.add_argument("--skip-checksum", action="store_true", help="do not verify the archives' published checksums")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)
