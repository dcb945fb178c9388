"""Shared test fixtures: the reference golden files live in ../shared/golden beside the checkout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("OTSEG_GOLDEN", REPO.parent / "shared" / "golden"))
REFERENCE_EMBEDDINGS = Path(
    os.environ.get("OTSEG_REFERENCE_EMBEDDINGS", REPO.parent / "shared" / "reference-embeddings")
)

torch.set_num_threads(min(2, torch.get_num_threads()))
# Test helpers that write fake datasets (`from fake_layouts import make_voc`) importable from every test folder.
sys.path.insert(0, str(REPO / "tests" / "data"))


def golden_file(name: str) -> Path:
    path = GOLDEN / name
    if not path.is_file():
        pytest.skip(
            f"golden fixture {path} not found (set OTSEG_GOLDEN to the folder holding the reference fixtures)",
            allow_module_level=True,
        )
    return path


def load_golden(name: str) -> dict:
    return torch.load(golden_file(name), map_location="cpu", weights_only=True)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the text-embedding cache of every test out of the user's home."""
    monkeypatch.setenv("OTSEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "otseg-cache"))
