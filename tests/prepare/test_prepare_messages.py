"""`otseg prepare` on downloads holding values its converters did not foresee (JSON nulls where numbers belong,
numbers too large for C): one line naming what was being read, exit 2, no traceback; in this process and in
worker processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from official_downloads import make_context

from otseg.cli import main

pytest.importorskip("scipy")


def _rle_counts_too_large(data: dict[str, Any]) -> None:
    data["annos_segmentation"][3]["segmentation"]["counts"] = [2**70, 5]


def _size_null(data: dict[str, Any]) -> None:
    data["annos_segmentation"][3]["segmentation"]["size"] = None


def _size_a_number(data: dict[str, Any]) -> None:
    data["annos_segmentation"][3]["segmentation"]["size"] = 5


def _category_too_large(data: dict[str, Any]) -> None:
    data["annos_segmentation"][3]["category_id"] = 10**30


def _height_null(data: dict[str, Any]) -> None:
    data["images"][0]["height"] = None


@pytest.mark.parametrize(
    "mutate", [_rle_counts_too_large, _size_null, _size_a_number, _category_too_large, _height_null]
)
@pytest.mark.parametrize("workers", ["0", "2"])
def test_unforeseen_values_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: Any, workers: str
) -> None:
    src = tmp_path / "downloads"
    make_context(src, archive=False)
    merged = src / "trainval_merged.json"
    data = json.loads(merged.read_text())
    mutate(data)
    merged.write_text(json.dumps(data))
    code = main(["prepare", "context59", "--src", str(src), "--data-root", str(tmp_path / "data"), "--no-progress",
                 "--workers", workers])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("otseg prepare: error: ") and str(src) in err, err
    assert "Traceback" not in err
