"""`otseg segment`: segment image files or folders with any class names."""

from __future__ import annotations

import argparse
import sys

from otseg.cli.model_options import add_model_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment your images with your class names: label maps, overlays with a legend, class fractions",
        description="Segment images (files or folders) with any class names. Writes, per image, <stem>_labels.png "
        "(palette PNG: pixel value = class index), <stem>_overlay.png (colours over the image, with a legend) and "
        "<stem>.json (class fractions), plus summary.json. Unreadable images are reported and skipped.",
    )
    p.add_argument("images", nargs="*", help="image files or folders of images")
    p.add_argument(
        "--sample",
        action="store_true",
        help="segment the sample picture shipped with the built-in --model (with its class names unless --classes)",
    )
    p.add_argument("--classes", help="comma-separated names, e.g. 'cat,sofa,wall', or a .txt file with one per line "
                   "(default: the model's own classes: otseg classes)")  # fmt: skip
    p.add_argument("--out", default="runs/segment", help="output folder (default: runs/segment)")
    add_model_arguments(p, precision=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otseg.cli.model_options import predictor_from_args
    from otseg.errors import BadValueError
    from otseg.named_models import named_model
    from otseg.segment import parse_class_list, segment_images

    names = parse_class_list(args.classes) if args.classes else None
    images = list(args.images)
    if args.sample:
        if args.checkpoint:
            raise BadValueError(
                "--sample segments the built-in model's own picture: use it with --model, not --checkpoint"
            )
        picture, sample_classes = named_model(args.model).sample
        images.append(str(picture))
        names = names or list(sample_classes)
    if not images:
        raise BadValueError("give the images to segment (files or folders), or --sample to try the built-in picture")
    predictor = predictor_from_args(args)
    if names is None:
        print(f"classes (the model's own, --classes to change): {', '.join(predictor.default_class_names)}")
    summary = segment_images(predictor, images, args.out, class_names=names, progress=not args.no_progress)
    done, failed = len(summary["images"]), len(summary["failed"])
    print(f"wrote label maps, overlays and class fractions of {done} image(s) to {args.out} (summary.json)")
    if failed:
        print(f"otseg segment: {failed} image(s) not segmented (listed above and in summary.json)", file=sys.stderr)
        return 1
    return 0
