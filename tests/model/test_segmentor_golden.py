"""The whole segmentor against the reference `OTSeg` fixture: reference-checkpoint conversion (non-contiguous
seen classes), fp16 text embeddings, training losses, whole-image scores and sliding-window inference."""

from __future__ import annotations

import pytest
import torch

from conftest import golden_segmentor_config, load_golden
from otseg import OTSeg
from otseg.config import ModelConfig, Setting
from otseg.model_files.reference_pth import convert_reference_state_dict
from otseg.train.objective import compute_losses

SEG = load_golden("segmentor.pt")
BACKBONE = load_golden("backbone.pt")
TOL = {"atol": 1e-5, "rtol": 1e-4}
SETTINGS: dict[str, Setting] = {"inductive": "inductive", "self_training": "transductive"}


def tiny_config(setting: Setting = "inductive") -> ModelConfig:
    return golden_segmentor_config(setting)


def reference_state_dict() -> dict[str, torch.Tensor]:
    return {**{"backbone." + k: v for k, v in BACKBONE["state_dict"].items()}, **SEG["state_dict"]}


def build(setting_key: str) -> OTSeg:
    model = OTSeg(tiny_config(SETTINGS[setting_key]))
    state, report = convert_reference_state_dict(reference_state_dict(), model)
    model.load_state_dict(state, strict=True)
    assert len(report.dropped) == 19  # 12 self_attn + 6 norm1 tensors + empty_weight
    model.set_class_embeddings(SEG["text_embedding"])  # float16, as the reference .npy
    return model


def test_trainable_parameters_follow_the_reference_rule():
    model = build("inductive")
    outside_head = sorted(n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head."))
    assert outside_head == sorted(SEG["trainable_outside_decode_head"])
    assert all(p.requires_grad for p in model.head.parameters())


@pytest.mark.parametrize("setting_key", list(SETTINGS))
def test_forward_train_losses(setting_key):
    model = build(setting_key).train()
    losses = compute_losses(model, SEG["images"], SEG["labels"])
    ref = SEG["outputs"][f"forward_train_{setting_key}"]
    assert set(losses) == set(ref)
    for name, value in ref.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("setting_key", list(SETTINGS))
def test_encode_decode(setting_key):
    model = build(setting_key).eval()
    with torch.no_grad():
        scores = model.encode_decode(SEG["images"])
    torch.testing.assert_close(scores, SEG["outputs"][f"encode_decode_{setting_key}"], **TOL)


def test_slide_inference_and_argmax():
    model = build("inductive").eval()
    ori_h, ori_w, _ = SEG["img_metas_slide"][0]["ori_shape"]
    with torch.no_grad():
        scores = model.slide_inference(SEG["images_slide"], out_size=(ori_h, ori_w))
    torch.testing.assert_close(scores, SEG["outputs"]["slide_inference_inductive"], **TOL)
    assert torch.equal(scores.softmax(dim=1).argmax(dim=1), SEG["outputs"]["slide_softmax_argmax_inductive"])


def test_predict_scores_is_slide_inference_per_image():
    model = build("inductive").eval()
    images = torch.cat([SEG["images_slide"], SEG["images_slide"].flip(-1)])
    scores = model.predict_scores(images)
    assert scores.shape == (2, 5, 80, 112)
    with torch.no_grad():
        torch.testing.assert_close(scores[:1], model.slide_inference(images[:1]), atol=0, rtol=0)
        torch.testing.assert_close(scores[1:], model.slide_inference(images[1:]), atol=0, rtol=0)
