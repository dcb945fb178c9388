"""`otseg check-data`: check the dataset layout a preset (or a dataset name) reads."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-data",
        help="check the dataset a preset reads: folders, lists, image/label pairing, label values, counts",
        description="Check the dataset layout a preset reads. Exit 0 when it is usable (counts that differ from "
        "the official ones are warnings); otherwise each problem is printed on one line with its fix, exit 1.",
    )
    p.add_argument("--preset", help="e.g. voc12-inductive (otseg presets lists them)")
    p.add_argument(
        "--dataset", help="instead of --preset: voc12, context59, coco_stuff164k, ade20k, or custom (your own folder)"
    )
    p.add_argument("--data-root", required=True, help="the --data-root given to otseg prepare / train / eval")
    p.add_argument("--sample", type=int, default=6, help="label maps read per split (default 6)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otseg.data.check import check_dataset, check_preset
    from otseg.data.facts import DATASET_ALIASES, list_datasets
    from otseg.errors import BadValueError
    from otseg.model.presets import get_preset

    if args.preset:
        check = check_preset(get_preset(args.preset), args.data_root, sample=args.sample)
    elif not args.dataset:
        raise BadValueError("otseg check-data needs --preset NAME (e.g. voc12-inductive) or --dataset NAME")
    else:
        dataset = DATASET_ALIASES.get(args.dataset, args.dataset)
        if dataset not in (*list_datasets(), "custom"):
            raise BadValueError(f"--dataset {args.dataset!r}: valid: {', '.join(list_datasets())}, custom")
        check = check_dataset(dataset, args.data_root, sample=args.sample)
    print(check.report())
    return 0 if check.usable else 1
