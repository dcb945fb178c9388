"""Shared test fixtures: the reference golden files live in ../shared/golden beside the checkout."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from otseg.clip.text import TextEncoder
from otseg.config import HeadConfig, ModelConfig, Setting, TextConfig, VisionConfig
from otseg.model.segmentor import OTSeg

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("OTSEG_GOLDEN", REPO.parent / "shared" / "golden"))
REFERENCE_EMBEDDINGS = Path(
    os.environ.get("OTSEG_REFERENCE_EMBEDDINGS", REPO.parent / "shared" / "reference-embeddings")
)

# The suite runs one pytest-xdist worker per core (`-n auto` in pyproject.toml); each worker, and the processes its
# tests start, then computes on one thread, so that the workers do not contend for the same cores.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))
# Test helpers that write fake datasets (`from fake_layouts import make_voc`) importable from every test folder.
sys.path.insert(0, str(REPO / "tests" / "data"))


# The golden tiny segmentor's architecture as dotted config overrides: the voc12-inductive preset shrunk to the
# golden tiny CLIP (64-pixel input, width 64, 3 layers, 32-d joint space). The one copy every test uses.
TINY_SEGMENTOR: dict[str, object] = {
    "vision.image_size": 64, "vision.width": 64, "vision.layers": 3, "vision.heads": 4, "vision.output_dim": 32,
    "vision.deep_prompt_layers": 2, "head.embed_dim": 32, "head.ffn_dim": 128, "head.output_size": 64,
    "crop_size": 64, "stride": 48, "test_short_side": 64,
}  # fmt: skip


def tiny_set_args(**changes: object) -> list[str]:
    """`--set KEY=VALUE` arguments of `TINY_SEGMENTOR`, with `changes` (keyword names use "__" for ".":
    vision__heads=1) replacing or adding entries."""
    items = {**TINY_SEGMENTOR, **{k.replace("__", "."): v for k, v in changes.items()}}
    return [arg for key, value in items.items() for arg in ("--set", f"{key}={value}")]


def tiny_train_overrides(
    preset: str, lr: float = 1e-3, log_interval: int = 4, extra: list[str] | None = None
) -> list[str]:
    """`--set` arguments for a seconds-long `otseg train` of `preset` at the tiny size (short warmup: the preset's
    1500 would never end). One head in the image tower, as the golden CLIP's width // 64 gives."""
    args = tiny_set_args(vision__heads=1, train__lr=lr, train__warmup_iters=2, train__log_interval=log_interval)
    if preset.startswith("coco"):
        args += ["--set", "vision.num_prompt_tokens=4"]  # the COCO presets' 100 prompt tokens only cost time here
    return args + [arg for item in extra or [] for arg in ("--set", item)]


def tiny_train_args(
    preset: str,
    root: Path,
    work_dir: Path,
    max_iters: int,
    batch_size: int = 2,
    global_batch: int | None = None,
    **overrides: Any,
) -> list[str]:
    """The `otseg train` command line of a tiny run (without the leading "train"), with the golden tiny CLIP.
    `global_batch`: default `batch_size` (one micro-batch per step in one process); 0 keeps the preset's."""
    batch = ["--set", f"train.global_batch={global_batch or batch_size}"] if global_batch != 0 else []
    return [
        "--preset", preset, "--data-root", str(root), "--work-dir", str(work_dir),
        "--clip", str(golden_file("openai_clip_jit.pt")),
        "--max-iters", str(max_iters), "--batch-size", str(batch_size), "--num-workers", "0", "--seed", "0",
        *batch, *tiny_train_overrides(preset, **overrides),
    ]  # fmt: skip


def golden_file(name: str) -> Path:
    """The path of a golden fixture. Missing: the test is skipped, or fails where CI=true (a CI run must not pass
    by skipping the parity tests)."""
    path = GOLDEN / name
    if not path.is_file():
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"golden fixture {path} not found and CI=true: the parity tests cannot run", pytrace=False)
        pytest.skip(
            f"golden fixture {path} not found (set OTSEG_GOLDEN to the folder holding the reference fixtures)",
            allow_module_level=True,
        )
    return path


def load_golden(name: str) -> dict:
    return torch.load(golden_file(name), map_location="cpu", weights_only=True)


def golden_segmentor_config(setting: Setting = "inductive"):
    """The architecture, classes and slide settings of the golden tiny segmentor (`segmentor.pt`), dropout off."""

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


def make_tiny_model(seed: int = 0, with_text: bool = True, setting: Setting = "inductive"):
    """A random-weight OTSeg of the golden tiny architecture (fast), with a random tiny CLIP text tower so that
    `set_classes` works, and its configured classes set. Predictions are meaningless; shapes and plumbing are real.
    """

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
