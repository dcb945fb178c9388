"""The one path from command-line arguments to a model, shared by `segment`, `eval`, `serve` and `export`.

`add_model_arguments` registers the options that name a model (`--model`, `--checkpoint`, `--preset`, `--clip`,
`--device`, `--allow-pickle`, `--trust-unverified`); `predictor_from_args` opens what they name, through
`Predictor.from_pretrained` (which knows the named models and every file format).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from otseg.errors import BadValueError
from otseg.named_models import NAMED_MODELS

if TYPE_CHECKING:
    from otseg.predictor import Predictor

__all__ = ["add_model_arguments", "predictor_from_args"]


def add_model_arguments(
    p: argparse.ArgumentParser,
    *,
    named: bool = True,
    checkpoint_required: bool = False,
    progress: bool = True,
    device_help: str = "cpu (default) or cuda",
) -> None:
    """Register the options naming a model on `p`.

    Args:
        named: offer `--model NAME` (a built-in model, default "demo") beside `--checkpoint`.
        checkpoint_required: `--checkpoint` must be given (commands that score a trained model: `eval`).
        progress: offer `--no-progress`.
        device_help: the help of `--device` (commands that pick a default device themselves say which).
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
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bars")


def predictor_from_args(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Predictor:
    """The model the options of `add_model_arguments` name, in a `Predictor` (its `.model` is the `OTSeg`).

    Raises:
        ValueError: `--clip` with a named model (which has its own text tower).
        FileNotFoundError: a `--checkpoint` that does not exist.
    """
    from otseg.predictor import Predictor  # the command's import: registering the options loads no torch

    device = args.device or "cpu"
    progress = not getattr(args, "no_progress", False)
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
        )
    if args.clip:
        raise BadValueError("--clip goes with --checkpoint (the built-in models have their own text tower)")
    return Predictor.from_pretrained(getattr(args, "model", None) or "demo", device=device, progress=progress)
