"""Class lists given by users: the one parser (from a text file, an option or a web form).

The datasets' own class names are facts, in `otseg.data.facts`.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from otseg.config import MAX_CLASS_NAME_CHARS, MAX_CLASSES
from otseg.errors import BadFileError, BadValueError, MissingFileError

__all__ = [
    "CLASS_FILE_SUFFIXES",
    "class_list_note",
    "parse_class_option",
    "parse_class_text",
    "read_class_file",
    "validate_class_names",
]

# The largest class list file: MAX_CLASSES names of MAX_CLASS_NAME_CHARS characters (4 UTF-8 bytes each), a line each.
_MAX_CLASS_FILE_BYTES = MAX_CLASSES * (4 * MAX_CLASS_NAME_CHARS + 2)
# A single word ending like this is a file name, not a class name (only .txt files are read as class lists).
CLASS_FILE_SUFFIXES = (".txt", ".csv", ".json", ".lst", ".list", ".names", ".yaml", ".yml")
# Separators people type that are not ours: each would silently make the whole text one class.
_WRONG_SEPARATORS = {
    ";": "';'",
    "\uff1b": "'\uff1b'",  # full-width semicolon
    "\uff0c": "'\uff0c'",  # full-width comma
    "\u3001": "'\u3001'",  # ideographic comma
    "\uff64": "'\uff64'",  # half-width ideographic comma
    "\ufe50": "'\ufe50'",  # small comma
    "\ufe51": "'\ufe51'",  # small ideographic comma
    "\u060c": "'\u060c'",  # Arabic comma
    "\u201a": "'\u201a'",  # single low-9 quotation mark (looks like a comma)
    "\u2e41": "'\u2e41'",  # reversed comma
    "\ufe54": "'\ufe54'",  # small semicolon
    "\u037e": "'\u037e'",  # Greek question mark (looks like a semicolon)
    "\u061b": "'\u061b'",  # Arabic semicolon
    "\uff5c": "'\uff5c'",  # full-width vertical line
    "|": "'|'",
    "\t": "a tab",
}
_QUOTES = "'\"`\u2018\u2019\u201c\u201d"
_BRACKETS = {"[": "]", "(": ")", "{": "}"}

# ---- class lists given by users: the one parser ------------------------------------------------------------


def validate_class_names(names: Iterable[str], where: str = "") -> list[str]:
    """Strip names and reject empty lists, empty, over-long and repeated names, with one line saying which.

    Args:
        names: the class names (a list, not a single string).
        where: what the names came from (a file, an option), put at the front of error messages.
    """
    prefix = f"{where}: " if where else ""
    if isinstance(names, str):
        raise TypeError(f"{prefix}class names must be a list of strings, got the single string {names!r}")
    names = list(names)  # a generator would be used up by the type check below
    bad = [(i, n) for i, n in enumerate(names) if not isinstance(n, str)]
    if bad:  # str(None) == "None" would silently become a class
        i, n = bad[0]
        raise TypeError(f"{prefix}class names must be strings; position {i} holds the {type(n).__name__} {n!r}")
    cleaned = [n.strip() for n in names]
    if not cleaned:
        raise BadValueError(f"{prefix}the class list is empty: give at least one class name")
    if len(cleaned) > MAX_CLASSES:
        raise BadValueError(f"{prefix}{len(cleaned):,} class names; at most {MAX_CLASSES:,} can be segmented at once")
    empty = [i for i, n in enumerate(cleaned) if not _visible(n)]
    if empty:
        raise BadValueError(f"{prefix}class name(s) at position(s) {empty} are empty")
    for i, n in enumerate(cleaned):
        if len(n) > MAX_CLASS_NAME_CHARS:
            raise BadValueError(
                f"{prefix}class name at position {i} is {len(n)} characters long (it starts {n[:30]!r}); "
                f"names may have at most {MAX_CLASS_NAME_CHARS}"
            )
    seen: dict[str, int] = {}
    for i, n in enumerate(cleaned):
        if n in seen:
            raise BadValueError(
                f"{prefix}class name {n!r} appears twice (positions {seen[n]} and {i}); names must be unique"
            )
        seen[n] = i
    return cleaned


def _visible(name: str) -> bool:
    """Whether a name shows anything: not only spaces and invisible format characters (zero-width space,
    byte-order mark, direction marks), which `str.strip` keeps."""
    return any(not c.isspace() and unicodedata.category(c) not in ("Cf", "Cc") for c in name)


def _suggestion(text: str) -> str:
    """The names in `text` as they should be typed: split on any separator, quotes and brackets removed."""
    inner = text.strip()
    if inner[:1] in _BRACKETS and inner.endswith(_BRACKETS[inner[0]]):
        inner = inner[1:-1]
    parts = re.split("[,\n" + re.escape("".join(_WRONG_SEPARATORS)) + "]", inner)
    names = [p.strip().strip(_QUOTES + "[](){}").strip() for p in parts]
    return ", ".join(n for n in names if n)


def _shown(text: str, limit: int = 80) -> str:
    """`text` quoted for a message, cut to `limit` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _refuse_other_syntax(text: str, names: list[str], where: str) -> None:
    """ValueError (one line, with the text to type instead) when a class list is written in another syntax:
    a list literal, quoted names, separators other than commas, or a file name."""
    stripped = text.strip()
    fix = f"give the names comma-separated, without quotes or brackets: {_shown(_suggestion(text), 200)}"
    if stripped[:1] in _BRACKETS and stripped.endswith(_BRACKETS[stripped[0]]):
        raise BadValueError(f"{where}: {_shown(stripped)} looks like a list literal, not a class list; {fix}")
    for separator, said in _WRONG_SEPARATORS.items():
        if separator in text:
            raise BadValueError(
                f"{where}: {_shown(stripped)} separates names with {said}, which is not a separator here (only "
                f"commas and new lines are); {fix} (a name that holds {said} goes in a .txt file, one name per line)"
            )
    for i, name in enumerate(names):
        if not name:
            continue  # empty names get their own message
        if name[:1] in _QUOTES or name[-1:] in _QUOTES:
            raise BadValueError(f"{where}: class name {_shown(name)} (position {i}) is wrapped in quotes; {fix}")
        if name[:1] in "[{" or name[-1:] in "]}":  # a round bracket may end a name: 'tv (monitor)'
            raise BadValueError(f"{where}: class name {_shown(name)} (position {i}) holds a bracket of a list; {fix}")
        if name.lower().endswith(CLASS_FILE_SUFFIXES) and " " not in name:
            raise BadValueError(
                f"{where}: {_shown(name)} looks like a file name, not a class name; type the class names "
                "themselves, comma-separated (e.g. 'cat, sofa, wall')"
            )


def parse_class_text(text: str, where: str = "--classes") -> list[str]:
    """'cat, sofa,wall' (commas or new lines) -> ['cat', 'sofa', 'wall'], validated.

    Text in another syntax is refused with the text to type instead: a list literal ('["a", "b"]'), quoted
    names, names separated by ';', '|' or tabs (each would silently give one class), a file name.

    Raises:
        ValueError: no names, an empty name between separators, an over-long or repeated name, another syntax;
            naming `where`.
    """
    text = (text or "").strip()
    if not text:
        raise BadValueError(f"{where}: type at least one class name, e.g. 'cat, sofa, wall'")
    names = [n.strip() for n in re.split(r"[,\n]", text)]
    _refuse_other_syntax(text, names, where)
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise BadValueError(
            f"{where}: class name(s) at position(s) {empty} are empty (an empty name: two commas in a row, or a "
            "comma at an end); give comma-separated names like 'cat, sofa, wall'"
        )
    return validate_class_names(names, where)


def parse_class_option(text: str, where: str = "--classes") -> list[str]:
    """A class-list option of the command line: comma-separated names, or a .txt file of one name per line.

    A single word ending in a file suffix (.txt, .csv, .json, ...) is taken as a file: a .txt file that exists is
    read; one that does not exist, or another suffix, is an error (never a class called "names.txt").

    Raises:
        FileNotFoundError: a .txt file that does not exist.
        ValueError: see `parse_class_text` and `read_class_file`; the message names `where` or the file.
    """
    stripped = (text or "").strip()
    if stripped and not re.search(r"[,\n]", stripped) and stripped.lower().endswith(CLASS_FILE_SUFFIXES):
        path = Path(stripped).expanduser()
        if path.suffix.lower() != ".txt":
            raise BadValueError(
                f"{where} {stripped}: class lists are read from .txt files (one name per line), not "
                f"{path.suffix} files; save the names as a .txt file, or give them comma-separated"
            )
        if path.exists() and not path.is_file():  # a folder, a pipe, a device: never read as a class list
            raise BadFileError(
                f"{where} {stripped}: not a regular file; give an existing .txt file (one name per line) or the "
                "names themselves, comma-separated (e.g. 'cat, sofa, wall')"
            )
        if not path.is_file():
            raise MissingFileError(
                f"{where} {stripped}: no such file; give an existing .txt file (one name per line) or the names "
                "themselves, comma-separated (e.g. 'cat, sofa, wall')"
            )
        return read_class_file(path)
    return parse_class_text(stripped, where)


def class_list_note(names: Sequence[str]) -> str | None:
    """A one-line note on a class list whose result would mislead: one class takes every pixel (there is no
    background class unless named). None when there is nothing to say."""
    if len(names) == 1:
        return (
            f"only one class ({names[0]!r}): every pixel is given to it (100 %), because the model has no "
            "background class to choose instead; name the other things in the picture too, or add a catch-all "
            "such as 'background'"
        )
    return None


def read_class_file(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a UTF-8 text file, one per line (blank lines skipped, a byte-order mark dropped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not UTF-8 text, lists no names, or holds an over-long or repeated name; the
            message names the file.
    """
    p = Path(path)
    if p.exists() and not p.is_file():
        raise BadFileError(f"class list {p} is not a regular file (a folder, pipe or device); give a .txt file")
    if not p.is_file():
        raise MissingFileError(f"class list {p} does not exist")
    size = p.stat().st_size
    if size > _MAX_CLASS_FILE_BYTES:
        raise BadValueError(
            f"{p} has {size:,} bytes, more than a list of {MAX_CLASSES:,} class names of at most "
            f"{MAX_CLASS_NAME_CHARS} characters can hold; give a .txt file of one class name per line"
        )
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # "-sig": a leading byte-order mark is not part of the first name
    except UnicodeDecodeError as e:
        raise BadValueError(
            f"{p} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise BadValueError(f"{p} lists no class names (give one per line)")
    return validate_class_names(names, str(p))
