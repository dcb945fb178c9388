"""Inference precision: float32 stays the reference computation bit for bit; bf16 autocasts the image tower only,
and the head (Sinkhorn included) and the scores stay float32."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_model
from otseg.model import precision as precision_module
from otseg.model.precision import check_precision, image_tower_autocast, precision_note
from otseg.ops import record_sinkhorn_calls


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


def _images(model, size: tuple[int, int] = (64, 96)) -> torch.Tensor:
    return torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3)) * 40


def test_float32_default_is_the_plain_computation_bit_for_bit(model):
    images = _images(model, (64, 64))
    with torch.no_grad():
        patch, global_emb = model.backbone(images)
        seen = model.seen_mask if model.config.apply_seen_bias else None
        plain = model.head.predict(patch, global_emb, model.class_embeddings, seen)
        plain = F.interpolate(plain, size=(64, 64), mode="bilinear", align_corners=False)
        default = model.encode_decode(images)
        explicit = model.encode_decode(images, precision="float32")
    assert torch.equal(default, plain) and torch.equal(explicit, plain)
    slid = _images(model)
    assert torch.equal(model.predict_scores(slid), model.predict_scores(slid, precision="float32"))


def test_bf16_autocasts_the_image_tower_only(model, monkeypatch):
    seen: dict[str, Any] = {}

    def backbone_hook(module, inputs, output):
        seen["backbone"] = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), output[0].dtype)

    head_forward = model.head.forward

    def watched_head_forward(patch_emb, global_emb, *args, **kwargs):  # head.predict calls self.forward: no hook
        seen["head"] = (torch.is_autocast_enabled("cpu"), patch_emb.dtype, global_emb.dtype)
        return head_forward(patch_emb, global_emb, *args, **kwargs)

    monkeypatch.setattr(model.head, "forward", watched_head_forward)
    handle = model.backbone.register_forward_hook(backbone_hook)
    try:
        with record_sinkhorn_calls() as calls:
            scores = model.predict_scores(_images(model), precision="bf16")
    finally:
        handle.remove()
    assert seen["backbone"] == (True, torch.bfloat16, torch.bfloat16)
    assert seen["head"] == (False, torch.float32, torch.float32)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert calls, "the tiny model's head runs the Sinkhorn"
    assert not torch.is_autocast_enabled("cpu")  # the region is left on return


def test_bf16_scores_are_close_to_float32(model):
    images = _images(model)
    full = model.predict_scores(images)
    half = model.predict_scores(images, precision="bf16")
    assert not torch.equal(full, half)  # bf16 did run: the image tower's rounding reaches the scores
    assert (full - half).abs().max() < 0.05
    assert (full.argmax(1) == half.argmax(1)).float().mean() > 0.9


def test_bad_precision_is_one_clear_error(model):
    with pytest.raises(ValueError, match=r"precision 'fp8' is not one of float32, bf16"):
        model.predict_scores(_images(model), precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--precision 'half'"):
        check_precision("half", "--precision")
    assert check_precision("bf16") == "bf16"


def test_float32_enters_no_autocast_region():
    with image_tower_autocast("float32", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    with image_tower_autocast("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")


def test_precision_note_only_for_bf16_on_a_cpu_without_bf16_units(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    note = precision_note("bf16", cpu)
    assert note is not None and note.startswith("precision bf16: ") and "\n" not in note
    assert precision_note("float32", cpu) is None
    assert precision_note("bf16", torch.device("cuda")) is None
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert precision_note("bf16", cpu) is None
