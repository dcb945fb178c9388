"""Initialisation as the reference's (spec section 4.2): decoder layers start as copies of one layer, PyTorch's
default Linear / LayerNorm init in the head, the VPT prompt init; and the demo's pinned "independent" layers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import pytest
import torch
from torch import nn

import otseg
from conftest import golden_file
from otseg.config import HeadConfig, ModelConfig
from otseg.demo.presets import METHODS, SETTINGS, DemoSettings, demo_model_config
from otseg.demo.pretrained import SHIPPED_MODEL, unpack_demo_model
from otseg.demo.tiny_clip import tiny_clip_path
from otseg.formats.openai_clip import read_clip_state_dict
from otseg.model.head import DecoderLayer, OTSegHead
from otseg.model.segmentor import OTSeg


@pytest.fixture(scope="module")
def voc_model() -> OTSeg:
    torch.manual_seed(0)
    return otseg.build_model("voc12-inductive")  # the full ViT-B/16 preset: built once for the module


def _layers(head: OTSegHead) -> list[DecoderLayer]:
    return [cast(DecoderLayer, layer) for layer in head.layers]


def _layer_tensors(head: OTSegHead) -> list[dict[str, torch.Tensor]]:
    return [dict(layer.state_dict()) for layer in head.layers]


def test_voc_preset_decoder_layers_start_equal(voc_model: OTSeg) -> None:
    layers = _layer_tensors(voc_model.head)
    assert len(layers) == 3
    for other in layers[1:]:
        assert other.keys() == layers[0].keys()
        for name, value in layers[0].items():
            assert torch.equal(value, other[name]), name
    # Copies, not one shared layer: each has its own storage, so training moves them apart.
    ptrs = {layer.linear1.weight.data_ptr() for layer in _layers(voc_model.head)}
    assert len(ptrs) == 3


def test_copies_are_independent_parameters_after_a_step() -> None:
    torch.manual_seed(0)
    head = OTSegHead(HeadConfig(embed_dim=16, num_layers=3, num_heads=2, ffn_dim=32, output_size=8))
    assert len({id(p) for p in head.parameters()}) == sum(1 for _ in head.parameters())
    first, second, _ = _layers(head)
    with torch.no_grad():
        first.linear1.weight.add_(1.0)
    assert not torch.equal(first.linear1.weight, second.linear1.weight)


def test_independent_layers_differ() -> None:
    torch.manual_seed(0)
    head = OTSegHead(
        HeadConfig(embed_dim=16, num_layers=3, num_heads=2, ffn_dim=32, output_size=8, layer_init="independent")
    )
    w = [layer.linear1.weight for layer in _layers(head)]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])


def test_unknown_layer_init_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="layer_init"):
        HeadConfig(layer_init="shared")  # type: ignore[arg-type]


def test_saved_configs_keep_the_init_they_were_built_with() -> None:
    d = ModelConfig().to_dict()
    assert ModelConfig.from_dict(d).head.layer_init == "copies"
    del d["head"]["layer_init"]  # a config saved before the setting existed: its layers were drawn independently
    assert ModelConfig.from_dict(d).head.layer_init == "independent"


def test_shipped_demo_model_unpacks_with_its_digest(tmp_path: Path) -> None:
    """The demo pack leaves out the tensors equal to a fresh model's (the last layer's never-trained ones): a fresh
    model from its saved config must start exactly as the packed one did, or the digest check refuses it."""
    settings = DemoSettings.full()
    clip = read_clip_state_dict(tiny_clip_path(settings.world, settings.clip, cache=tmp_path, progress=False))
    model, _ = unpack_demo_model(SHIPPED_MODEL, clip)  # raises on a digest mismatch
    assert model.config.head.layer_init == "independent"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_demo_pins_independent_layers(method: str, setting) -> None:
    # The demo's table was measured with independently drawn layers: its models keep that init bit for bit.
    assert demo_model_config(method, setting).head.layer_init == "independent"


def test_head_defaults_are_pytorchs(voc_model: OTSeg) -> None:
    """Linear: kaiming-uniform(a=sqrt 5) -> |w| <= 1/sqrt(fan_in), bias |b| <= 1/sqrt(fan_in); LayerNorm 1 / 0."""
    linears = [m for m in voc_model.head.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in voc_model.head.modules() if isinstance(m, nn.LayerNorm)]
    assert linears and norms
    for lin in linears:
        bound = 1.0 / math.sqrt(lin.in_features)
        weight = lin.weight.detach()
        assert float(weight.abs().max()) <= bound
        assert float(weight.abs().max()) > 0.95 * bound  # uniform over the whole range, not a narrow normal
        # U(-b, b) has standard deviation b / sqrt(3); a trunc-normal(0.02) init would give 0.02.
        assert float(weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
        assert lin.bias is not None
        bias = lin.bias.detach()
        assert 0 < float(bias.abs().max()) <= bound  # not zeroed (the dead init_weights would zero it)
    for norm in norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


def test_vpt_prompt_init(voc_model: OTSeg) -> None:
    bb = voc_model.backbone
    p, width = bb.cfg.patch_size, bb.cfg.width
    bound = math.sqrt(6.0 / (3 * p * p + width))
    assert (p, width) == (16, 768) and bound == pytest.approx(0.0625)
    for prompts in (bb.prompt_embeddings.detach(), bb.deep_prompt_embeddings.detach()):
        assert float(prompts.abs().max()) <= bound
        assert float(prompts.abs().max()) > 0.99 * bound
    # kaiming_normal, fan_out, a=0: std sqrt(2 / out_features)
    assert float(bb.prompt_proj.weight.detach().std()) == pytest.approx(math.sqrt(2.0 / width), rel=0.02)
    assert float(bb.prompt_proj.bias.detach().abs().max()) <= 1.0 / math.sqrt(width)
    assert torch.equal(bb.prompt_norm.weight, torch.ones(width))
    assert torch.equal(bb.prompt_norm.bias, torch.zeros(width))


def test_golden_reference_deep_copies_its_layer() -> None:
    """The reference's layers are copies of one: its `self_attn.in_proj_weight`, which the golden's explicit
    `init_weights()` call does not touch, is identical in the three layers (the other weights were redrawn by that
    call, which the reference's own training never makes)."""
    sd = torch.load(golden_file("decode_head.pt"), weights_only=True)["state_dict"]
    in_proj = [sd[f"decoder_1.layers.{i}.self_attn.in_proj_weight"] for i in range(3)]
    assert torch.equal(in_proj[0], in_proj[1]) and torch.equal(in_proj[1], in_proj[2])
    # The Linear weights init_weights redraws differ, which shows the test above is not comparing one tensor.
    q = [sd[f"decoder_1.layers.{i}.multihead_attn.q.weight"] for i in range(3)]
    assert not torch.equal(q[0], q[1])
