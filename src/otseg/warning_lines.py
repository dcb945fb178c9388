"""Warnings on the command line, one line each: `otseg segment: warning: MESSAGE (Category)`.

Python prints a warning as two lines (the file and line that raised it, then that source line), and libraries'
messages may span lines themselves (PIL's "Image size (...) exceeds limit ... could be decompression bomb DOS
attack.", "Corrupt EXIF data", "Truncated File Read"). Inside `one_line_warnings(prog)` every warning shown
goes to stderr as one line naming the command, with the message's own line breaks and object reprs
("<_io.BytesIO object at 0x7f...>") removed. Which warnings are shown is unchanged (Python's filters decide,
each once per place by default); the previous display is restored on exit.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["format_one_line", "one_line_warnings", "without_object_reprs"]

_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def without_object_reprs(text: str) -> str:
    """`text` without Python object reprs such as "<_io.BytesIO object at 0x7f...>" (they tell a user nothing)."""
    return _OBJECT_REPR.sub("", text)


def format_one_line(prog: str, message: Warning | str, category: type[Warning]) -> str:
    """'PROG: warning: MESSAGE (Category)' on one line."""
    text = " ".join(without_object_reprs(str(message)).split())
    return f"{prog}: warning: {text} ({category.__name__})"


@contextmanager
def one_line_warnings(prog: str) -> Iterator[None]:
    """Within the block, warnings shown on stderr take one line each (`format_one_line`)."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        stream = file if file is not None else sys.stderr
        with contextlib.suppress(OSError, ValueError):  # stderr closed or gone: a warning is not worth an error
            stream.write(format_one_line(prog, message, category) + "\n")

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
