"""The `otseg` command line: one module per command, each registering its arguments (`add_parser`) and running
the command (`run`), which imports what it needs. Building the parser imports no torch, so `otseg --help` and
every `otseg COMMAND --help` answer at once.

A `otseg.errors.UserError` (bad input of any kind: its message names the file or setting, the value and the fix)
ends in one line, `otseg COMMAND: error: MESSAGE`, and exit status 2; so does an operating-system error about a
named file (a path that does not exist, no permission, a full disk). Every other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from otseg.cli import (
    bench,
    check_data,
    classes,
    convert,
    demo,
    eval,
    export,
    params,
    prepare,
    presets,
    score,
    segment,
    serve,
    train,
    weights,
)
from otseg.errors import UserError
from otseg.version import __version__
from otseg.warning_lines import one_line_warnings, without_object_reprs

__all__ = ["build_parser", "main"]

# In the order `otseg --help` lists them: what a user runs first, first.
COMMANDS = (
    demo, segment, classes, serve, export, train, eval, score, bench, prepare, check_data, weights, presets, params,
    convert,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otseg",
        description="OTSeg zero-shot semantic segmentation (Multi-Prompt Sinkhorn on CLIP ViT-B/16).",
    )
    parser.add_argument("--version", action="version", version=f"otseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _one_line(error: BaseException) -> str:
    """An error's message on one line.

    Library messages sometimes span lines; an exception re-raised from a DataLoader worker carries the
    worker's whole traceback, whose last line is the original error.
    """
    message = without_object_reprs(str(error))  # "<_io.BytesIO object at 0x...>" in a library's message
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if "Original Traceback" in message and lines:
        return lines[-1]
    return " ".join(lines) or type(error).__name__


def _is_user_error(error: BaseException) -> bool:
    """Bad input: otseg's own family, or the operating system refusing a file the user named."""
    if isinstance(error, UserError):
        return True
    # open("missing.png"), a read-only --out, a full disk: the OS names the file (filename is set), so the user
    # can act on it. An OSError without a file name is something else, and keeps its traceback.
    return isinstance(error, OSError) and getattr(error, "filename", None) is not None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `otseg` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        with one_line_warnings(f"otseg {args.command}"):  # PIL's and others' multi-line warnings: one line each
            code = int(args.run(args) or 0)
        sys.stdout.flush()  # inside the try: a reader that went away is seen here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (`otseg classes | head`): stop quietly. Python would report the pipe again when
        # it flushes stdout at exit, so stdout now points at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"otseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not _is_user_error(e) or os.environ.get("OTSEG_DEBUG", "") not in ("", "0"):
            raise
        print(f"otseg {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
