"""`otseg prepare DATASET --src DIR --data-root DIR`: the official downloads -> the layouts otseg reads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

# The datasets `otseg prepare` converts (otseg.prepare.DATASETS, which a test keeps equal to this).
DATASETS = ("voc12", "context59", "coco", "ade20k")


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otseg.prepare import PrepareOptions, prepare_dataset

    opts = PrepareOptions(
        src=Path(args.src).expanduser(),
        data_root=Path(args.data_root).expanduser(),
        workers=args.workers if args.workers is not None else min(8, os.cpu_count() or 1),
        progress=not args.no_progress,
        verify_checksums=not args.skip_checksum,
    )
    prepare_dataset(args.dataset, opts)
    return 0
