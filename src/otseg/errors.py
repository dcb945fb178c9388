"""The errors otseg raises for what a user gave it: one family, so that the command line can tell them from bugs.

A `UserError` is caused by the input (a file, a value, a setting, the data) and carries a message that names the
input, the value and the fix; `otseg` prints it as one line and exits with status 2. Every other exception is a
bug, and keeps its traceback. Each subclass also derives from the built-in exception of its kind, so code that
catches `ValueError` or `OSError` keeps working.
"""

from __future__ import annotations

__all__ = [
    "BadFileError",
    "BadModelError",
    "BadValueError",
    "MissingExtraError",
    "MissingFileError",
    "NonFiniteLossError",
    "UnknownNameError",
    "UserError",
]


class UserError(Exception):
    """Base of the errors caused by the user's input; its message is the whole story, on one line."""


class BadValueError(UserError, ValueError):
    """A value, setting, class list or file content that otseg cannot use."""


class BadFileError(UserError, OSError):
    """A file or folder that cannot be read or written as asked (unreadable, corrupt, too large, a full disk)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that does not exist."""


class MissingExtraError(UserError, RuntimeError):
    """An optional package a command needs (gradio, onnx, scipy) is not installed; the message says what to install."""


class BadModelError(UserError, RuntimeError):
    """A model that cannot do what was asked of it (no text tower to embed names, no class embeddings yet)."""


class UnknownNameError(UserError, KeyError):
    """A name (preset, dataset, model, download) that otseg does not know; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError's str() quotes its message
        return str(self.args[0]) if self.args else ""


class NonFiniteLossError(UserError, FloatingPointError):
    """Training met a non-finite loss (a learning rate too high, fp16 overflow); the message says what to change."""
