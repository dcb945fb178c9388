"""Class lists given by users: the one parser (from a text file, an option or a web form).

The datasets' own class names are facts, in `otseg.data.facts`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from otseg.config import MAX_CLASS_NAME_CHARS

__all__ = [
    "parse_class_text",
    "read_class_file",
    "validate_class_names",
]

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
        raise ValueError(f"{prefix}the class list is empty: give at least one class name")
    empty = [i for i, n in enumerate(cleaned) if not n]
    if empty:
        raise ValueError(f"{prefix}class name(s) at position(s) {empty} are empty")
    for i, n in enumerate(cleaned):
        if len(n) > MAX_CLASS_NAME_CHARS:
            raise ValueError(
                f"{prefix}class name at position {i} is {len(n)} characters long (it starts {n[:30]!r}); "
                f"names may have at most {MAX_CLASS_NAME_CHARS}"
            )
    seen: dict[str, int] = {}
    for i, n in enumerate(cleaned):
        if n in seen:
            raise ValueError(
                f"{prefix}class name {n!r} appears twice (positions {seen[n]} and {i}); names must be unique"
            )
        seen[n] = i
    return cleaned


def parse_class_text(text: str, where: str = "--classes") -> list[str]:
    """'cat, sofa,wall' (commas or new lines) -> ['cat', 'sofa', 'wall'], validated.

    Raises:
        ValueError: no names, an empty name between separators, an over-long or repeated name; naming `where`.
    """
    text = (text or "").strip()
    if not text:
        raise ValueError(f"{where}: type at least one class name, e.g. 'cat, sofa, wall'")
    names = [n.strip() for n in re.split(r"[,\n]", text)]
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise ValueError(
            f"{where}: class name(s) at position(s) {empty} are empty (an empty name: two commas in a row, or a "
            "comma at an end); give comma-separated names like 'cat, sofa, wall'"
        )
    return validate_class_names(names, where)


def read_class_file(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a UTF-8 text file, one per line (blank lines skipped, a byte-order mark dropped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not UTF-8 text, lists no names, or holds an over-long or repeated name; the
            message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"class list {p} does not exist")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # "-sig": a leading byte-order mark is not part of the first name
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{p} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{p} lists no class names (give one per line)")
    return validate_class_names(names, str(p))
