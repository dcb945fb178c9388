"""`otseg presets [NAME]`: list the model presets, or describe one."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "presets",
        help="list the model presets, or describe one",
        description="List the presets (one per line), or describe one: its dataset, classes, split and settings.",
    )
    p.add_argument("name", nargs="?", help="a preset to describe")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otseg.model.presets import describe_preset, list_presets

    if args.name:
        print(describe_preset(args.name))
        return 0
    for name in list_presets():
        print(name)
    return 0
