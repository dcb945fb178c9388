"""`otseg classes`: a model's default class names, one per line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classes",
        help="list a model's default class names (what segment uses without --classes)",
        description="Print a model's class names, one per line: those of --model (default: the demo model), or "
        "of --preset alone (e.g. otseg classes --preset voc12-inductive).",
    )
    p.add_argument("--model", help="'demo', a preset name, or a model file/folder (default: demo, or --preset's)")
    p.add_argument(
        "--preset",
        help="a preset: its classes (alone), or the preset a reference .pth given as --model was trained with",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otseg.model.presets import get_preset, list_presets
    from otseg.predictor import default_class_names

    if args.preset:
        get_preset(args.preset)  # a typo: refused with the list of presets (not "no model")
    model = args.model
    if model is None:
        model = args.preset or "demo"  # --preset alone: that preset's classes
    elif args.preset and (model == "demo" or model in list_presets() or Path(model).is_dir()):
        print(f"otseg classes: --preset {args.preset} is ignored: {model} names its own classes", file=sys.stderr)
    for name in default_class_names(model, preset=args.preset):
        print(name)
    return 0
