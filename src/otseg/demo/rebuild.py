"""`python -m otseg.demo.rebuild {tiny-clip,demo-model} --out FILE`: rebuild one of the demo's shipped weight packs
from scratch and compare it bit for bit with the one in the package.

The commands live in this module of their own, not in `tiny_clip` or `pretrained`: importing `otseg` imports those
two (through `Predictor` and the named models), and `python -m` on a module that is already imported runs a second
copy of it as `__main__`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from otseg.demo.pretrained import REBUILD_THREADS as MODEL_THREADS
from otseg.demo.pretrained import rebuild_demo_model
from otseg.demo.tiny_clip import REBUILD_THREADS as CLIP_THREADS
from otseg.demo.tiny_clip import rebuild_tiny_clip

__all__ = ["main", "out_path_problem"]


def out_path_problem(out: Path) -> str | None:
    """Why `out` cannot receive the pack, in words (checked before a run of minutes), or None."""
    if out.is_dir():
        return f"--out {out} is a folder: give a file name, e.g. {out / 'pack.safetensors'}"
    if not out.parent.is_dir():
        return f"--out {out}: folder {out.parent} does not exist: create it or choose another path"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m otseg.demo.rebuild",
        description="Rebuild a weight pack shipped with otseg's demo from scratch and compare it bit for bit with the "
        "shipped one (exit status 0 when identical, 1 when not).",
    )
    sub = parser.add_subparsers(dest="pack", required=True, metavar="PACK")
    for name, text in (
        ("tiny-clip", f"pretrain the tiny CLIP (about 17 minutes on 2 CPU cores, {CLIP_THREADS} threads)"),
        ("demo-model", f"train the built-in demo model, OTSeg+ inductive, seed 0 (minutes; {MODEL_THREADS} thread)"),
    ):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("--out", required=True, help="the pack to write (.safetensors)")
        p.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    problem = out_path_problem(out)
    if problem is not None:
        print(f"{parser.prog} {args.pack}: {problem}", file=sys.stderr)
        return 2
    rebuild = rebuild_tiny_clip if args.pack == "tiny-clip" else rebuild_demo_model
    try:
        return rebuild(out, progress=not args.no_progress)
    except OSError as e:  # the pack could not be written (atomic_write's one line: the path and the space left)
        print(f"{parser.prog} {args.pack}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
