"""`otseg score`: score folders of label-map PNGs against ground truth."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score folders of label-map PNGs: mIoU(S), mIoU(U), hIoU, per-class IoU",
        description="Score predicted label maps against ground truth. Both folders hold PNGs with the same file "
        "stems; values are class indices 0..K-1 in the preset's class order, 255 = ignore.",
    )
    p.add_argument("--preset", required=True, help="gives the class names and the seen/unseen split")
    p.add_argument("--pred", required=True, help="folder of predicted label maps (*.png)")
    p.add_argument("--gt", required=True, help="folder of ground-truth label maps (*.png)")
    p.add_argument("--out", required=True, help="results JSON (a Markdown table is written beside it)")
    p.add_argument(
        "--reduce-zero-label",
        action="store_true",
        help="ground truth is raw VOC/Context (0 = background -> ignore, c -> c-1), as the datasets store it",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otseg.eval.metrics import format_markdown
    from otseg.eval.score import score_folders, write_results
    from otseg.model.presets import get_preset

    cfg = get_preset(args.preset)
    metrics = score_folders(
        args.pred, args.gt, cfg.class_names, cfg.seen_classes, cfg.unseen_classes,
        reduce_zero_label=args.reduce_zero_label,
    )  # fmt: skip
    json_path, md_path = write_results(metrics, args.out, title=f"{args.preset}: {args.pred}")
    print(format_markdown(metrics, title=args.preset))
    print(f"wrote {json_path} and {md_path}")
    return 0
