"""MPS and MPSA as standalone ops: shapes, the transport-plan properties they rely on, gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from otseg.ops import MultiPromptSinkhornAttention, SoftmaxCrossAttention, mps_scores, transport_weighted_scores


def _unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=-1)


def test_mps_scores_shape_and_broadcast():
    torch.manual_seed(0)
    pixels, prompts = torch.randn(2, 30, 16), torch.randn(4, 3, 16)
    scores = mps_scores(pixels, prompts)
    assert scores.shape == (2, 4, 30)
    torch.testing.assert_close(scores, mps_scores(pixels, prompts.expand(2, -1, -1, -1)))


def test_mps_score_is_transport_weighted_similarity():
    torch.manual_seed(0)
    pixels, prompts = _unit(1, 50, 8), _unit(1, 2, 4, 8)
    sim = torch.einsum("bmc,bknc->bkmn", pixels, prompts)
    scores, plan = transport_weighted_scores(sim)
    # Columns of the plan sum to 1/N, the whole plan to 1, so M*N*T averages to 1 per (pixel, prompt).
    torch.testing.assert_close(plan.sum(2), torch.full((1, 2, 4), 1 / 4))
    torch.testing.assert_close(plan.sum((2, 3)), torch.ones(1, 2))
    torch.testing.assert_close(scores, (50 * 4 * plan * sim).sum(-1))
    # With identical prompts the plan is uniform and MPS reduces to N times the plain cosine score.
    same = prompts[:, :, :1].expand(-1, -1, 4, -1)
    torch.testing.assert_close(mps_scores(pixels, same), 4 * torch.einsum("bmc,bkc->bkm", pixels, same[:, :, 0]))


def test_mps_prefers_the_matching_class():
    torch.manual_seed(0)
    classes = _unit(3, 16)
    prompts = F.normalize(classes[:, None] + 0.1 * torch.randn(3, 4, 16), dim=-1)
    pixels = F.normalize(classes[torch.tensor([0, 1, 2, 1])] + 0.05 * torch.randn(4, 16), dim=-1)
    assert mps_scores(pixels[None], prompts).argmax(1).tolist() == [[0, 1, 2, 1]]


def test_mpsa_as_a_drop_in_cross_attention():
    torch.manual_seed(0)
    attn = MultiPromptSinkhornAttention(dim=16, attn_dropout=0.0)
    queries, memory = torch.randn(2, 3, 4, 16, requires_grad=True), torch.randn(2, 25, 16)
    out, score_map = attn(queries, memory)
    assert out.shape == (2, 3, 4, 16) and score_map.shape == (2, 3, 25)
    (out.square().mean() + score_map.mean()).backward()
    assert queries.grad is not None and torch.isfinite(queries.grad).all()
    assert all(p.grad is not None for p in attn.parameters())


def test_mpsa_values_are_plan_weighted():
    torch.manual_seed(0)
    attn = MultiPromptSinkhornAttention(dim=8, attn_dropout=0.0)
    with torch.no_grad():
        attn.v.weight.copy_(torch.eye(8))
        attn.v.bias.zero_()
        attn.proj.weight.copy_(torch.eye(8))
        attn.proj.bias.zero_()
    memory = torch.ones(1, 10, 8)  # constant values: each prompt gets 1/N of it (plan columns sum to 1/N)
    out, _ = attn(torch.randn(1, 2, 4, 8), memory)
    torch.testing.assert_close(out, torch.full_like(out, 1 / 4))


def test_softmax_attention_has_the_same_interface():
    torch.manual_seed(0)
    attn = SoftmaxCrossAttention(dim=16, num_heads=4, attn_dropout=0.0)
    out, score_map = attn(torch.randn(2, 3, 1, 16), torch.randn(2, 25, 16))
    assert out.shape == (2, 3, 1, 16) and score_map.shape == (2, 3, 25)
