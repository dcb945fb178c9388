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


def golden_segmentor_config(setting: str = "inductive"):
    """The architecture, classes and slide settings of the golden tiny segmentor (`segmentor.pt`), dropout off."""
    from otseg.model.config import HeadConfig, ModelConfig, VisionConfig

    ref = load_golden("segmentor.pt")["config"]["inductive"]
    b, h, test = ref["backbone"], ref["decode_head"], ref["test_cfg"]
    return ModelConfig(
        name="golden-tiny",
        setting=setting,
        vision=VisionConfig(
            image_size=b["input_resolution"], patch_size=b["patch_size"], width=b["width"], layers=b["layers"],
            heads=b["heads"], output_dim=b["output_dim"], num_prompt_tokens=b["num_tokens"],
            deep_prompt_layers=b["total_d_layer"], prompt_dropout=0.0,
        ),
        head=HeadConfig(
            embed_dim=h["embed_dims"], num_layers=h["num_layers"], num_heads=h["num_heads"],
            ffn_dim=4 * h["embed_dims"], output_size=h["img_size"], dropout=0.0, attn_dropout=0.0,
        ),
        class_names=tuple(ref["class_names"]),
        unseen_classes=tuple(ref["novel_class"]),
        crop_size=test["crop_size"][0],
        stride=test["stride"][0],
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the text-embedding cache of every test out of the user's home."""
    monkeypatch.setenv("OTSEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "otseg-cache"))


def make_tiny_model(seed: int = 0, with_text: bool = True, setting: str = "inductive"):
    """A random-weight OTSeg of the golden tiny architecture (fast), with a random tiny CLIP text tower so that
    `set_classes` works, and its configured classes set. Predictions are meaningless; shapes and plumbing are real.
    """
    import dataclasses

    from otseg.clip.text import TextEncoder
    from otseg.model.config import TextConfig
    from otseg.model.segmentor import OTSeg

    base = golden_segmentor_config(setting)
    cfg = dataclasses.replace(
        base,
        text=TextConfig(width=32, heads=2, layers=1, output_dim=base.head.embed_dim),
        templates=("a photo of a {}.", "a picture of a {}."),
        test_short_side=base.crop_size,
    )
    torch.manual_seed(seed)
    model = OTSeg(cfg)
    if with_text:
        model.attach_text_encoder(TextEncoder(cfg.text))
        model.set_classes(cfg.class_names)
    return model.eval()
