"""The reference's checkpoint key table (`official_state_dict_voc.tsv`): one row per key of a released checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from otseg.errors import BadFileError, MissingFileError

__all__ = ["read_reference_key_table"]


def read_reference_key_table(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of the table: key, shape, dtype, kind, trainable, numel (all as text)."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"reference key table {p} does not exist")
    lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    header = lines[0].split("\t") if lines else []
    if header[:2] != ["key", "shape"]:
        raise BadFileError(f"{p}: expected a TSV whose header starts with 'key<TAB>shape', got {header[:3]}")
    return [dict(zip(header, ln.split("\t"), strict=False)) for ln in lines[1:]]
