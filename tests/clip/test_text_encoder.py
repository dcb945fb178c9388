"""The CLIP text tower against the official `CLIPTextEncoder` (golden README section 4)."""

from __future__ import annotations

import pytest
import torch

from conftest import golden_file
from otseg.clip.loading import load_clip_weights, text_state_dict
from otseg.clip.text import TextEncoder
from otseg.clip.vpt import VPTVisionTransformer
from otseg.config import TextConfig, VisionConfig
from otseg.formats.openai_clip import read_clip_state_dict

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(golden_file("text_encoder.pt"), weights_only=True)


def _config(cfg: dict) -> TextConfig:
    return TextConfig(
        context_length=cfg["context_length"],
        vocab_size=cfg["vocab_size"],
        width=cfg["transformer_width"],
        heads=cfg["transformer_heads"],
        layers=cfg["transformer_layers"],
        output_dim=cfg["embed_dim"],
    )


@pytest.fixture(scope="module")
def encoder(fixture: dict) -> TextEncoder:
    clip_sd = torch.load(golden_file("openai_clip.pt"), weights_only=True)["state_dict"]
    state = dict(fixture["state_dict"])
    # Omitted from the fixture to save space; bit-identical to the tiny CLIP's.
    state["token_embedding.weight"] = clip_sd["token_embedding.weight"]
    model = TextEncoder(_config(fixture["config"]))
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_outputs(fixture: dict, encoder: TextEncoder) -> None:
    tokens = fixture["tokens"]
    c, t, length = tokens.shape
    with torch.no_grad():
        out = encoder(tokens.reshape(c * t, length)).reshape(c, t, -1)
        normalized = encoder.encode_prompts(tokens)
    torch.testing.assert_close(out, fixture["output"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out, fixture["clip_encode_text"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(normalized, fixture["output_normalized"], atol=ATOL, rtol=RTOL)


def test_state_dict_keys_and_loading_from_clip(fixture: dict) -> None:
    sd = read_clip_state_dict(golden_file("openai_clip_jit.pt"))
    text = text_state_dict(sd)
    expected = {*fixture["state_dict"], "token_embedding.weight"}
    assert set(text) == expected
    for key, value in fixture["state_dict"].items():
        assert torch.equal(text[key], value), key

    encoder = TextEncoder(_config(fixture["config"]))
    assert set(encoder.state_dict()) == expected
    backbone = VPTVisionTransformer(
        VisionConfig(image_size=32, patch_size=16, width=64, layers=3, heads=1, output_dim=32, deep_prompt_layers=2)
    )
    report = load_clip_weights(backbone, encoder, sd)
    assert report.ignored == ["logit_scale"]
    assert sum(k.startswith("text_encoder.") for k in report.loaded) == len(expected)
    assert "6 prompt parameters keep their init" in report.summary()
    with torch.no_grad():
        out = encoder(fixture["tokens"].reshape(18, 77)).reshape(3, 6, -1)
    torch.testing.assert_close(out, fixture["output"], atol=ATOL, rtol=RTOL)
