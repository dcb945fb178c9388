"""SinkhornOptions passed explicitly to MPS / MPSA: stopping groups of images, the backward, the loop's modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from otseg.ops import (
    MultiPromptSinkhornAttention,
    SinkhornOptions,
    record_sinkhorn_calls,
    sinkhorn,
    transport_weighted_scores,
)


def _similarities(batch: int = 4, classes: int = 3, pixels: int = 40, prompts: int = 4) -> torch.Tensor:
    """(B, K, M, N) cosine similarities; image b's are scaled by a factor growing with b, so the images' transport
    problems converge at different speeds (a flat similarity converges in a few iterations)."""
    torch.manual_seed(0)
    sim = torch.einsum(
        "bmc,bknc->bkmn",
        F.normalize(torch.randn(batch, pixels, 16), dim=-1),
        F.normalize(torch.randn(batch, classes, prompts, 16), dim=-1),
    )
    # Contiguous: the einsum's own output layout depends on the batch size, and a reduction over differently laid out
    # memory rounds differently, which would hide the equalities below behind float noise.
    return (sim * torch.linspace(0.2, 1.0, batch).view(-1, 1, 1, 1)).contiguous()


def test_stop_groups_solve_each_group_of_images_as_a_call_on_those_images_alone():
    sim = _similarities()
    with record_sinkhorn_calls() as calls:
        scores, plan = transport_weighted_scores(sim, options=SinkhornOptions(stop_group=2))
    assert [c.shape[0] for c in calls] == [6, 6]  # 2 images x 3 classes per call
    for lo in (0, 2):
        alone_scores, alone_plan = transport_weighted_scores(sim[lo : lo + 2].contiguous())
        assert torch.equal(plan[lo : lo + 2], alone_plan) and torch.equal(scores[lo : lo + 2], alone_scores)

    # One stopping test over all 4 images (no group, or a group as large as the batch) is another result: the
    # statistic is a mean over every problem of the call.
    with record_sinkhorn_calls() as single:
        _, whole = transport_weighted_scores(sim, options=SinkhornOptions(stop_group=None))
    _, larger = transport_weighted_scores(sim, options=SinkhornOptions(stop_group=8))
    _, default = transport_weighted_scores(sim)
    assert [c.shape[0] for c in single] == [12] and torch.equal(whole, larger) and torch.equal(whole, default)
    assert single[0].iterations not in {c.iterations for c in calls}
    assert not torch.allclose(whole, plan, rtol=0, atol=1e-7)


def test_a_last_group_smaller_than_the_others_is_its_own_call():
    sim = _similarities(batch=3)
    with record_sinkhorn_calls() as calls:
        _, plan = transport_weighted_scores(sim, options=SinkhornOptions(stop_group=2))
    assert [c.shape[0] for c in calls] == [6, 3]
    assert torch.equal(plan[2:], transport_weighted_scores(sim[2:].contiguous())[1])


def _gradient(sim: torch.Tensor, options: SinkhornOptions | None) -> tuple[torch.Tensor, list]:
    leaf = sim.clone().requires_grad_()
    with record_sinkhorn_calls() as calls:
        scores, _ = transport_weighted_scores(leaf, options=options)
    (grad,) = torch.autograd.grad(scores.square().sum(), leaf)
    return grad, calls


def test_unrolled_backward_option_gives_the_unrolled_gradient():
    sim = _similarities(batch=2)
    unrolled, calls = _gradient(sim, SinkhornOptions(backward="unrolled", stop_group=1))
    assert [(c.backward, c.update) for c in calls] == [("unrolled", "reference")] * 2
    # One call per image (one stopping test each, as the option's groups) gives the same gradient.
    alone = SinkhornOptions(backward="unrolled")
    reference = torch.cat([_gradient(sim[i : i + 1].contiguous(), alone)[0] for i in range(2)])
    assert torch.equal(unrolled, reference)

    implicit, calls = _gradient(sim, SinkhornOptions(backward="implicit", stop_group=1))
    assert {c.backward for c in calls} == {"implicit"}
    assert not torch.allclose(implicit, unrolled, rtol=0, atol=1e-9)
    torch.testing.assert_close(implicit, unrolled, rtol=1e-2, atol=1e-4)  # both differentiate the same plan


def test_mpsa_passes_the_options_to_its_sinkhorn():
    torch.manual_seed(0)
    attn = MultiPromptSinkhornAttention(dim=16, attn_dropout=0.0)
    queries, memory = torch.randn(4, 3, 4, 16), torch.randn(4, 25, 16)
    with record_sinkhorn_calls() as calls:
        grouped, _ = attn(queries, memory, SinkhornOptions(stop_group=1))
    assert [c.shape for c in calls] == [(3, 25, 4)] * 4
    for i in range(4):
        alone, _ = attn(queries[i : i + 1], memory[i : i + 1])
        # To float rounding: the einsums' output layouts depend on the batch size.
        torch.testing.assert_close(grouped[i : i + 1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "modes",
    [{"fixed_iters": 5}, {"thresh": 1e-4}, {"update": "log"}, {"update": "reference"}, {"check_every": 3},
     {"max_iter": 7}, {"fixed_iters": 4, "update": "log", "check_every": "adaptive"}],
)  # fmt: skip
def test_loop_modes_reach_every_call_as_sinkhorn_keywords(modes):
    # The options' modes replace what the caller passes (here the reference's max_iter 100 and thresh 1e-6), and give
    # the plan a direct `sinkhorn` call with those keywords gives.
    sim = _similarities()
    with record_sinkhorn_calls() as calls:
        _, plan = transport_weighted_scores(sim, options=SinkhornOptions(stop_group=2, **modes))
    settings = {"max_iter": 100, "thresh": 1e-6, **modes}
    direct = torch.cat([sinkhorn(1.0 - sim[lo : lo + 2].reshape(-1, 40, 4), 0.05, **settings) for lo in (0, 2)])
    assert torch.equal(plan.reshape(-1, 40, 4), direct)
    with record_sinkhorn_calls() as default_calls:
        transport_weighted_scores(sim, options=SinkhornOptions(stop_group=2))
    if "fixed_iters" in modes:
        assert [c.iterations for c in calls] == [modes["fixed_iters"]] * 2
    if "max_iter" in modes:
        assert all(c.iterations <= modes["max_iter"] for c in calls)
    if "update" in modes:
        assert {c.update for c in calls} == {modes["update"]}
    if {"thresh", "max_iter", "fixed_iters"} & set(modes):
        assert [c.iterations for c in calls] != [c.iterations for c in default_calls]


def test_unset_thresh_and_max_iter_are_the_callers():
    options = SinkhornOptions(update="log")
    assert options.sinkhorn_kwargs(max_iter=50, thresh=1e-5) == {
        "max_iter": 50, "thresh": 1e-5, "update": "log", "backward": "implicit", "check_every": "auto",
        "fixed_iters": None,
    }  # fmt: skip
    assert SinkhornOptions(thresh=0.0, max_iter=3).sinkhorn_kwargs(100, 1e-6)["thresh"] == 0.0
    assert SinkhornOptions(thresh=0.0, max_iter=3).sinkhorn_kwargs(100, 1e-6)["max_iter"] == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"backward": "both"}, "backward"), ({"stop_group": 0}, "stop_group"), ({"fixed_iters": 0}, "fixed_iters"),
     ({"fixed_iters": True}, "fixed_iters"), ({"update": "fast"}, "update"), ({"thresh": -1e-6}, "thresh"),
     ({"thresh": float("nan")}, "thresh"), ({"max_iter": 0}, "max_iter"), ({"check_every": 0}, "check_every"),
     ({"check_every": "sometimes"}, "check_every")],
)  # fmt: skip
def test_options_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SinkhornOptions(**kwargs)
