"""The one path from command-line arguments to a model, shared by `segment`, `eval`, `serve` and `export`.

`add_model_arguments` registers the options that name a model (`--model`, `--checkpoint`, `--preset`, `--clip`,
`--device`, `--allow-pickle`, `--trust-unverified`, and for the commands that run it `--precision`);
`predictor_from_args` opens what they name, through `Predictor.from_pretrained` (which knows the named models and
every file format).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import TYPE_CHECKING, Any

from otseg.config import PRECISIONS
from otseg.errors import BadValueError
from otseg.named_models import NAMED_MODELS

if TYPE_CHECKING:
    from otseg.config import Precision
    from otseg.predictor import Predictor

__all__ = ["add_model_arguments", "predictor_from_args"]

_PRECISION_NOTE_START = "precision bf16: "  # how `precision_note`'s text starts


def add_model_arguments(
    p: argparse.ArgumentParser,
    *,
    named: bool = True,
    checkpoint_required: bool = False,
    progress: bool = True,
    device_help: str = "cpu (default) or cuda",
    precision: bool = False,
) -> None:
    """Register the options naming a model on `p`.

    Args:
        named: offer `--model NAME` (a built-in model, default "demo") beside `--checkpoint`.
        checkpoint_required: `--checkpoint` must be given (commands that score a trained model: `eval`).
        progress: offer `--no-progress`.
        device_help: the help of `--device` (commands that pick a default device themselves say which).
        precision: offer `--precision float32|bf16` (commands that run the model: not `export`, whose graph is
            float32).
    """
    names = ", ".join(repr(n) for n in NAMED_MODELS)
    if named:
        p.add_argument(
            "--model",
            default="demo",
            help=f"a built-in model: {names} (default 'demo': the miniature demo model, shipped with otseg)",
        )
    p.add_argument(
        "--checkpoint",
        required=checkpoint_required,
        help=("instead of --model: " if named else "")
        + "an otseg folder, an iter_N.pt from otseg train, or a reference .pth (with --preset)",
    )
    p.add_argument("--clip", help="OpenAI CLIP weights (ViT-B-16.pt) for the text tower, to name any class")
    p.add_argument("--preset", help="the preset a reference .pth was trained with (e.g. voc12-inductive)")
    p.add_argument("--device", help=device_help)
    p.add_argument("--allow-pickle", action="store_true", help="load old pickled checkpoints (trusted files only)")
    p.add_argument(
        "--trust-unverified",
        action="store_true",
        help="load an otseg model file that carries no SHA-256 of its tensors (trusted files only)",
    )
    if precision:
        p.add_argument(
            "--precision",
            choices=PRECISIONS,
            default="float32",
            help="float32 (default) or bf16: the image tower under bfloat16 autocast, faster only where the hardware "
            "computes in bfloat16 (recent GPUs, CPUs with AVX512-BF16 or AMX), slower elsewhere; the decode head and "
            "the scores stay float32 (docs/speed.md)",
        )
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bars")


def predictor_from_args(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Predictor:
    """The model the options of `add_model_arguments` name, in a `Predictor` (its `.model` is the `OTSeg`).

    Raises:
        ValueError: `--clip` with a named model (which has its own text tower).
        FileNotFoundError: a `--checkpoint` that does not exist.
    """
    from otseg.model.precision import check_precision, precision_note  # the command's imports: registering the
    # options loads no torch

    device = args.device or "cpu"
    progress = not getattr(args, "no_progress", False)
    precision = check_precision(getattr(args, "precision", "float32"), "--precision")
    # The Predictor's warning about bf16 on a CPU without bfloat16 units becomes one line, as the CLI's notes are.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PRECISION_NOTE_START, category=UserWarning)
        predictor = _open(args, device, progress, precision, overrides)
    note = precision_note(predictor.precision, predictor.device)
    if note is not None:
        print(f"otseg {getattr(args, 'command', 'run')}: note: {note}", file=sys.stderr)
    return predictor


def _open(
    args: argparse.Namespace, device: str, progress: bool, precision: Precision, overrides: dict[str, Any] | None
) -> Predictor:
    from otseg.predictor import Predictor

    if args.checkpoint:
        return Predictor.from_pretrained(
            args.checkpoint,
            device=device,
            clip=args.clip,
            preset=args.preset,
            allow_pickle=args.allow_pickle,
            progress=progress,
            overrides=overrides,
            trust_unverified=getattr(args, "trust_unverified", False),
            precision=precision,
        )
    if args.clip:
        raise BadValueError("--clip goes with --checkpoint (the built-in models have their own text tower)")
    if args.preset is not None:  # was silently ignored: a typo (or any preset) would not be noticed
        from otseg.model.presets import get_preset

        get_preset(args.preset)  # a typo: "unknown preset ...; valid presets: ..."
        raise BadValueError(
            f"--preset {args.preset} goes with --checkpoint (it names the preset a reference .pth was trained with); "
            "the built-in models carry their own config"
        )
    name = getattr(args, "model", None) or "demo"
    return Predictor.from_pretrained(name, device=device, progress=progress, precision=precision)
