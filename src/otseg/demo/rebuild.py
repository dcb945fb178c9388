"""`python -m otseg.demo.rebuild {tiny-clip,demo-model} --out FILE`: rebuild one of the demo's shipped weight packs
from scratch and compare it bit for bit with the one in the package; `python -m otseg.demo.rebuild model-folder
--out DIR`: write the built-in model folder (`otseg/builtin_models/demo`) from the shipped packs and compare it
with the shipped folder (seconds).

The commands live in this module of their own, so that `tiny_clip` and `pretrained` hold no command line (and
`python -m` never runs a second copy of a module that the command imports).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from otseg.demo.pretrained import REBUILD_THREADS as MODEL_THREADS
from otseg.demo.pretrained import rebuild_demo_model, same_model_folder, write_demo_model_folder
from otseg.demo.tiny_clip import REBUILD_THREADS as CLIP_THREADS
from otseg.demo.tiny_clip import rebuild_tiny_clip
from otseg.named_models import NAMED_MODELS

__all__ = ["main", "out_path_problem", "write_model_folder"]


def out_path_problem(out: Path) -> str | None:
    """Why `out` cannot receive the pack, in words (checked before a run of minutes), or None."""
    if out.is_dir():
        return f"--out {out} is a folder: give a file name, e.g. {out / 'pack.safetensors'}"
    if not out.parent.is_dir():
        return f"--out {out}: folder {out.parent} does not exist: create it or choose another path"
    return None


def write_model_folder(out: Path) -> int:
    """Write the built-in demo model's folder into `out` and compare it with the shipped one (0 when the same)."""
    if out.exists() and not out.is_dir():
        print(f"python -m otseg.demo.rebuild model-folder: --out {out} is a file: give a folder", file=sys.stderr)
        return 2
    write_demo_model_folder(out)
    print(f"wrote {out} (config.json, model.safetensors)")
    return same_model_folder(out, NAMED_MODELS["demo"].path)


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
    text = "write the built-in model folder (otseg/builtin_models/demo) from the shipped packs (seconds)"
    p = sub.add_parser("model-folder", help=text, description=text[0].upper() + text[1:] + ".")
    p.add_argument("--out", required=True, help="the folder to write (config.json and model.safetensors in it)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.pack == "model-folder":
        return write_model_folder(out)
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
