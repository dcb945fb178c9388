"""`otseg eval`: evaluate a checkpoint with the zero-shot protocol (mIoU(S), mIoU(U), hIoU)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from otseg.cli.model_options import add_model_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint with the zero-shot protocol: mIoU(S), mIoU(U), hIoU",
        description="Evaluate a checkpoint on a dataset's validation split with the reference protocol (test-size "
        "resize, sliding windows, one dataset-wide confusion matrix) and write the metrics as JSON and Markdown.",
    )
    add_model_arguments(p, named=False, checkpoint_required=True, progress=False, precision=True,
                        device_help="cpu or cuda (default: cuda if available)")  # fmt: skip
    p.add_argument("--data-root", required=True, help="folder holding the dataset in mmsegmentation's layout")
    p.add_argument("--embeddings", help="class embeddings file (e.g. voc12_otseg.npy)")
    p.add_argument("--dataset", help="dataset layout if not the preset's")
    p.add_argument("--out", default="eval.json", help="results JSON (Markdown beside it)")
    p.add_argument("--limit", type=int, help="first N images only")
    p.add_argument("--save-predictions", help="folder for predicted label-map PNGs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otseg.cli.dataset_options import attach_class_embeddings, custom_dataset_overrides, data_config, dataset_name
    from otseg.cli.model_options import predictor_from_args
    from otseg.cli.overrides import split_overrides
    from otseg.data.check import require_usable
    from otseg.data.datasets import build_dataset
    from otseg.data.transforms import TestTransform
    from otseg.distributed import init_distributed, shutdown
    from otseg.errors import BadValueError
    from otseg.eval.evaluate import evaluate, throughput_line
    from otseg.eval.metrics import format_markdown
    from otseg.eval.published import format_published_comparison, method_of, published_rows
    from otseg.eval.score import write_results

    model_over, _ = split_overrides(args.set)
    model_over.update(custom_dataset_overrides(args))
    model = predictor_from_args(args, overrides=model_over).model
    if args.embeddings or not model.has_class_embeddings:
        attach_class_embeddings(model, args)
    dist_info = init_distributed(args.device)
    try:
        model.to(dist_info.device)
        data_cfg = data_config(model.config, args.set)
        name = dataset_name(args, model.config)
        require_usable(name, args.data_root, ("val",), verbose=dist_info.is_main)
        val_set = build_dataset(name, args.data_root, "val", TestTransform(data_cfg))
        if model.num_classes != val_set.num_classes:
            raise BadValueError(
                f"the model from {args.checkpoint} scores {model.num_classes} classes but the {name} dataset has "
                f"{val_set.num_classes}: give --embeddings with one row per dataset class, or --clip to embed the "
                "dataset's class names"
            )
        start = time.perf_counter()
        metrics = evaluate(
            model, val_set, dist_info=dist_info, limit=args.limit, save_predictions=args.save_predictions,
            precision=args.precision,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        if dist_info.is_main:
            out = Path(args.out)
            json_path, md_path = write_results(
                metrics, out, title=f"{args.preset or model.config.name}: {args.checkpoint}"
            )
            print(format_markdown(metrics, title=model.config.name))
            rows = published_rows(model.config)
            if rows:  # the paper's numbers for this benchmark protocol (otseg.eval.published says where from)
                method = method_of(model.head.cfg.ensemble_weight)
                print(format_published_comparison(metrics, rows, method, model.config.name))
            print(f"wrote {json_path} and {md_path}")
            print(throughput_line(metrics["num_images"], seconds, args.precision, dist_info))
    finally:
        shutdown()
    return 0
