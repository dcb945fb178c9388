"""The prompted CLIP image encoder against the official `VPTCLIPVisionTransformer` (golden README §3)."""

from __future__ import annotations

import pytest
import torch

from conftest import golden_file
from otseg.clip.loading import load_clip_weights, resize_positional_embedding
from otseg.clip.vpt import VPTVisionTransformer
from otseg.config import VisionConfig

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(golden_file("backbone.pt"), weights_only=True)


def _config(cfg: dict) -> VisionConfig:
    return VisionConfig(
        image_size=cfg["input_resolution"],
        patch_size=cfg["patch_size"],
        width=cfg["width"],
        layers=cfg["layers"],
        heads=cfg["heads"],
        output_dim=cfg["output_dim"],
        num_prompt_tokens=cfg["num_tokens"],
        deep_prompt_layers=cfg["total_d_layer"],
    )


@pytest.fixture(scope="module")
def backbone(fixture: dict) -> VPTVisionTransformer:
    model = VPTVisionTransformer(_config(fixture["config"]))
    report = load_clip_weights(model, None, golden_file("openai_clip_jit.pt"))
    assert len(report.missing_prompt) == 6
    assert report.positional_resize == ((5, 64), (17, 64))
    loaded = model.state_dict()
    for key, value in fixture["state_dict"].items():
        if "prompt" not in key:
            assert torch.equal(loaded[key], value), key
    prompts = {k: v for k, v in fixture["state_dict"].items() if "prompt" in k}
    assert len(prompts) == 6
    model.load_state_dict(prompts, strict=False)
    return model.eval()


def test_parameter_names_match_reference(fixture: dict, backbone: VPTVisionTransformer) -> None:
    assert set(backbone.state_dict()) == set(fixture["state_dict"])
    trainable = sorted(k for k in fixture["state_dict"] if "prompt" in k)
    assert trainable == sorted(
        [
            "prompt_embeddings",
            "deep_prompt_embeddings",
            "prompt_proj.weight",
            "prompt_proj.bias",
            "prompt_norm.weight",
            "prompt_norm.bias",
        ]
    )


def _check(model: VPTVisionTransformer, images: torch.Tensor, expected: dict) -> None:
    with torch.no_grad():
        patches, global_embedding, blocks = model(images, return_blocks=True)
    torch.testing.assert_close(patches, expected["features"][0], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(global_embedding, expected["global_embedding"], atol=ATOL, rtol=RTOL)
    for name in ("block_inputs", "block_outputs"):
        assert len(blocks[name]) == len(expected[name])
        for i, (ours, ref) in enumerate(zip(blocks[name], expected[name])):
            torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL, msg=f"{name}[{i}]")


def test_outputs(fixture: dict, backbone: VPTVisionTransformer) -> None:
    _check(backbone, fixture["images"], fixture["outputs"])


def test_non_square_input_resamples_positions(fixture: dict, backbone: VPTVisionTransformer) -> None:
    assert fixture["outputs_b"]["features"][0].shape[-2:] == (5, 7)
    _check(backbone, fixture["images_b"], fixture["outputs_b"])


def test_prompt_norm_perturbed(fixture: dict, backbone: VPTVisionTransformer) -> None:
    original = {k: v.clone() for k, v in backbone.prompt_norm.state_dict().items()}
    perturbed = {k.removeprefix("prompt_norm."): v for k, v in fixture["prompt_norm_perturbed"].items()}
    backbone.prompt_norm.load_state_dict(perturbed)
    try:
        _check(backbone, fixture["images"], fixture["outputs_prompt_norm_perturbed"])
    finally:
        backbone.prompt_norm.load_state_dict(original)


def test_plain_forward_matches_recorded_forward(fixture: dict, backbone: VPTVisionTransformer) -> None:
    with torch.no_grad():
        patches, global_embedding = backbone(fixture["images"])
    torch.testing.assert_close(patches, fixture["outputs"]["features"][0], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(global_embedding, fixture["outputs"]["global_embedding"], atol=ATOL, rtol=RTOL)


def test_prompt_dropout_only_in_training(fixture: dict) -> None:
    model = VPTVisionTransformer(_config(fixture["config"]))
    model.load_state_dict(fixture["state_dict"])
    images = fixture["images"]
    model.eval()
    with torch.no_grad():
        a, _ = model(images)
        b, _ = model(images)
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        c, _ = model(images)
    assert not torch.allclose(a, c)


def test_prompt_init_ranges() -> None:
    cfg = VisionConfig(image_size=64, width=768, layers=3, heads=12, deep_prompt_layers=2)
    model = VPTVisionTransformer(cfg)
    bound = (6.0 / (3 * 16 * 16 + 768)) ** 0.5  # 0.0625
    assert model.prompt_embeddings.shape == (1, 10, 768)
    assert model.deep_prompt_embeddings.shape == (2, 10, 768)
    assert model.prompt_embeddings.abs().max() <= bound
    assert model.deep_prompt_embeddings.abs().max() <= bound
    assert model.prompt_embeddings.abs().max() > 0.9 * bound
    std = model.prompt_proj.weight.std().item()
    assert abs(std - (2 / 768) ** 0.5) < 0.1 * (2 / 768) ** 0.5
    assert model.prompt_norm.eps == 1e-6


def test_fullsize_positional_resize(fixture: dict) -> None:
    ref = fixture["fullsize_resize"]
    rows = torch.arange(197, dtype=torch.float64)[:, None]
    cols = torch.arange(768, dtype=torch.float64)[None, :]
    source = (torch.sin(0.37 * rows + 0.011 * cols) + 0.5 * torch.cos(0.05 * rows * (1 + cols % 7))).float()
    assert torch.equal(source[:, :16], ref["source_channels_0_16"])
    resized = resize_positional_embedding(source, 32)
    assert list(resized.shape) == list(ref["resized_shape"]) == [1025, 768]
    torch.testing.assert_close(resized[:, ref["channels"]], ref["resized"], atol=1e-6, rtol=0)
    assert torch.equal(resized[0], source[0])
