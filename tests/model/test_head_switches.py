"""The ablation switches of the head: MPS path off, softmax attention, prompts count, ensemble weight, maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from otseg.config import HeadConfig
from otseg.model.head import OTSegHead


def _inputs(k: int = 3, n: int = 4, c: int = 32):
    torch.manual_seed(0)
    patch = F.normalize(torch.randn(2, c, 4, 5), dim=1)  # non-square grid
    return patch, F.normalize(torch.randn(2, c), dim=-1), F.normalize(torch.randn(k, n, c), dim=-1)


def _head(**kw) -> OTSegHead:
    torch.manual_seed(1)
    return OTSegHead(HeadConfig(embed_dim=32, num_layers=3, num_heads=4, ffn_dim=64, output_size=20, **kw)).eval()


def test_default_is_otseg_plus():
    head = _head()
    out = head(*_inputs())
    assert out.decoder_logits.shape == out.mps_logits.shape == (2, 3, 20, 20)
    torch.testing.assert_close(head.ensemble_logits(out), 0.5 * out.decoder_logits + 0.5 * out.mps_logits)


def test_mps_path_off():
    head = _head(use_mps=False)
    out = head(*_inputs())
    assert out.mps_logits is None
    seen = torch.tensor([True, False, False])
    pred = head.predict(*_inputs(), seen_mask=seen)
    expected = torch.sigmoid(out.decoder_logits)
    expected[:, 0] -= 0.1
    torch.testing.assert_close(pred, expected)


@pytest.mark.parametrize("weight", [0.0, 1.0, 0.3])
def test_ensemble_weight(weight):
    head = _head(ensemble_weight=weight)
    out = head(*_inputs())
    torch.testing.assert_close(head.ensemble_logits(out), weight * out.decoder_logits + (1 - weight) * out.mps_logits)


def test_zegclip_style_baseline_trains():
    head = _head(attention="softmax", use_mps=False, map_combination="last").train()
    patch, glob, text = _inputs(n=1)
    out = head(patch, glob, text)
    torch.testing.assert_close(out.decoder_logits, head._upsample(out.layer_maps[-1], (4, 5)))
    out.decoder_logits.mean().backward()
    assert head.q_proj.weight.grad is not None


@pytest.mark.parametrize("n", [1, 2, 8])
def test_any_number_of_prompts(n):
    out = _head()(*_inputs(n=n))
    assert out.queries.shape == (2, 3, n, 32) and torch.isfinite(out.decoder_logits).all()


def test_gated_combination_formula():
    head = _head()
    out = head(*_inputs())
    a1, a2, a3 = out.layer_maps
    torch.testing.assert_close(
        head.combine_layer_maps(out.layer_maps), a3 * torch.sigmoid(a1).sqrt() * torch.sigmoid(a2).sqrt()
    )


def test_unknown_attention_is_an_error():
    with pytest.raises(ValueError, match="mpsa"):
        _head(attention="linear")
