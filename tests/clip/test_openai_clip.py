"""OpenAI CLIP architecture and checkpoint reading against the golden tiny CLIP (golden README section 5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import golden_file
from otseg.clip.loading import infer_clip_configs, load_clip_weights, load_openai_clip
from otseg.clip.model import CLIP
from otseg.clip.vpt import VPTVisionTransformer
from otseg.config import TextConfig, VisionConfig
from otseg.formats.openai_clip import read_clip_state_dict

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(golden_file("openai_clip.pt"), weights_only=True)


def _build(cfg: dict) -> CLIP:
    vision = VisionConfig(
        image_size=cfg["image_resolution"],
        patch_size=cfg["vision_patch_size"],
        width=cfg["vision_width"],
        layers=cfg["vision_layers"],
        heads=cfg["vision_width"] // 64,  # OpenAI's rule for the image tower
        output_dim=cfg["embed_dim"],
        deep_prompt_layers=cfg["vision_layers"] - 1,
    )
    text = TextConfig(
        context_length=cfg["context_length"],
        vocab_size=cfg["vocab_size"],
        width=cfg["transformer_width"],
        heads=cfg["transformer_heads"],
        layers=cfg["transformer_layers"],
        output_dim=cfg["embed_dim"],
    )
    return CLIP(vision, text)


def test_clip_outputs_match_reference(fixture: dict) -> None:
    model = _build(fixture["config"])
    model.load_state_dict(fixture["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        image = model.encode_image(fixture["images"])
        text = model.encode_text(fixture["tokens"])
        per_image, per_text = model(fixture["images"], fixture["tokens"])
    torch.testing.assert_close(image, fixture["encode_image"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(text, fixture["encode_text"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(per_image, fixture["logits_per_image"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(per_text, fixture["logits_per_text"], atol=ATOL, rtol=RTOL)


def test_infer_configs_and_load_openai_clip(fixture: dict) -> None:
    vision, text = infer_clip_configs(fixture["state_dict"], text_heads=4)
    assert (vision.image_size, vision.patch_size, vision.width) == (32, 16, 64)
    assert (vision.layers, vision.heads, vision.output_dim) == (3, 1, 32)
    assert (text.context_length, text.vocab_size, text.width) == (77, 49408, 16)
    assert (text.heads, text.layers, text.output_dim) == (4, 2, 32)
    model = load_openai_clip(golden_file("openai_clip_jit.pt"), text_heads=4)
    with torch.no_grad():
        per_image, _ = model(fixture["images"], fixture["tokens"])
    torch.testing.assert_close(per_image, fixture["logits_per_image"], atol=ATOL, rtol=RTOL)


def test_torchscript_archive_equals_plain_state_dict(fixture: dict) -> None:
    from_jit = read_clip_state_dict(golden_file("openai_clip_jit.pt"))
    plain = fixture["state_dict"]
    assert len(from_jit) == 74
    assert set(from_jit) == set(plain)
    for key, value in plain.items():
        assert from_jit[key].dtype == torch.float32, key
        assert torch.equal(from_jit[key], value), key


def test_plain_state_dict_file_with_wrapper_and_module_prefix(fixture: dict, tmp_path: Path) -> None:
    path = tmp_path / "wrapped.pt"
    half = {f"module.{k}": v.half() if v.is_floating_point() else v for k, v in fixture["state_dict"].items()}
    torch.save({"state_dict": half, "context_length": torch.tensor(77)}, path)
    sd = read_clip_state_dict(path)
    assert set(sd) == set(fixture["state_dict"])
    assert all(v.dtype == torch.float32 for v in sd.values())


def test_missing_file_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        read_clip_state_dict(path)


def test_garbage_file_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match=r"garbage\.pt") as info:
        read_clip_state_dict(path)
    assert "TorchScript" in str(info.value)
    assert "weights_only" in str(info.value)


def _tiny_backbone() -> VPTVisionTransformer:
    return VPTVisionTransformer(
        VisionConfig(
            image_size=64,
            patch_size=16,
            width=64,
            layers=3,
            heads=4,
            output_dim=32,
            num_prompt_tokens=10,
            deep_prompt_layers=2,
        )
    )


def test_unexpected_and_missing_key_errors(fixture: dict) -> None:
    sd = dict(fixture["state_dict"])
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['visual\.extra'\]"):
        load_clip_weights(_tiny_backbone(), None, {**sd, "visual.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['bogus'\]"):
        load_clip_weights(_tiny_backbone(), None, {**sd, "bogus": torch.zeros(1)})
    missing = {k: v for k, v in sd.items() if k != "visual.ln_post.bias"}
    with pytest.raises(ValueError, match=r"missing key\(s\) \['visual\.ln_post\.bias'\]"):
        load_clip_weights(_tiny_backbone(), None, missing)


def test_shape_mismatch_error(fixture: dict) -> None:
    sd = dict(fixture["state_dict"])
    sd["visual.proj"] = torch.zeros(64, 16)
    with pytest.raises(ValueError, match=r"'visual\.proj' \(64, 16\) vs the model's \(64, 32\)"):
        load_clip_weights(_tiny_backbone(), None, sd)
