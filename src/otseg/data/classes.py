"""Dataset class names and zero-shot splits.

The names and splits are data (`classes.json`, shipped as package data); this module is only a typed loader.
Names are exactly the reference datasets' `CLASSES` strings, in the order of the label ids (after
`reduce_zero_label` for VOC, Context and ADE20K): the order matters because class id `c` is row `c` of the
text-embedding table and channel `c` of the score map.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

__all__ = ["DatasetClasses", "get_dataset_classes", "list_datasets"]

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
