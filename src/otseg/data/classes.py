"""Dataset class names and zero-shot splits.

The names and splits are data (`classes.json`, shipped as package data); this module is only a typed loader.
Names are exactly the reference datasets' `CLASSES` strings, in the order of the label ids (after
`reduce_zero_label` for VOC, Context and ADE20K): the order matters because class id `c` is row `c` of the
text-embedding table and channel `c` of the score map.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from otseg.model.config import MAX_CLASS_NAME_CHARS

__all__ = [
    "DatasetClasses",
    "get_dataset_classes",
    "list_datasets",
    "parse_class_text",
    "read_class_file",
    "validate_class_names",
]

_RESOURCE = "classes.json"


@dataclass(frozen=True)
class DatasetClasses:
    """Class names of one dataset and its zero-shot split (`unseen` is empty where there is none)."""

    name: str
    class_names: tuple[str, ...]
    unseen: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.class_names)
        bad = [i for i in self.unseen if not 0 <= i < n]
        if bad:
            raise ValueError(f"{self.name}: unseen ids {bad} out of range for {n} classes")
        if len(set(self.unseen)) != len(self.unseen):
            raise ValueError(f"{self.name}: duplicate unseen ids {list(self.unseen)}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def seen(self) -> tuple[int, ...]:
        """Ids of the seen classes: every id not in `unseen`, ascending."""
        unseen = set(self.unseen)
        return tuple(i for i in range(self.num_classes) if i not in unseen)

    @property
    def unseen_names(self) -> tuple[str, ...]:
        return tuple(self.class_names[i] for i in self.unseen)

    @property
    def seen_names(self) -> tuple[str, ...]:
        return tuple(self.class_names[i] for i in self.seen)


@lru_cache(maxsize=1)
def _load_table() -> dict[str, Any]:
    text = resources.files("otseg.data").joinpath(_RESOURCE).read_text(encoding="utf-8")
    table: dict[str, Any] = json.loads(text)
    return {k: v for k, v in table.items() if not k.startswith("_")}


def list_datasets() -> list[str]:
    """Names accepted by `get_dataset_classes`, sorted."""
    return sorted(_load_table())


def get_dataset_classes(name: str) -> DatasetClasses:
    """Classes and zero-shot split of dataset `name`: `voc12`, `context59`, `coco_stuff164k` or `ade20k`."""
    table = _load_table()
    if name not in table:
        raise KeyError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(table))}")
    entry = table[name]
    return DatasetClasses(
        name=name,
        class_names=tuple(entry["class_names"]),
        unseen=tuple(sorted(int(i) for i in entry["unseen"])),
    )


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
