"""Sinkhorn against the reference's 13 recorded cases, plus properties that the model relies on."""

from __future__ import annotations

import pytest
import torch

from conftest import load_golden
from otseg.ops import record_sinkhorn_calls, sinkhorn, sinkhorn_potentials

GOLDEN_CASES = load_golden("sinkhorn.pt")["cases"]


def _case_ids() -> list[str]:
    return [c["name"] for c in GOLDEN_CASES]


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=_case_ids())
def test_matches_reference_plan_potentials_and_iterations(case):
    """The default path (scaling update, a stop check after every iteration: the CPU's fused loop) and the literal
    reference loop, on every recorded case: counts, plans, potentials, stopping statistics."""
    eps = case["epsilon"]
    uniform = torch.allclose(case["mu"], torch.full_like(case["mu"], 1 / case["mu"].shape[1]))
    mu = None if uniform else case["mu"]
    with record_sinkhorn_calls() as calls:
        plan = sinkhorn(case["C"], eps, mu=mu, nu=case["nu"])
    info = calls[0]
    assert info.iterations == case["iterations"]
    assert info.update == "scaling" and not info.fallback and info.syncs == info.iterations
    assert plan.dtype == torch.float32
    torch.testing.assert_close(plan, case["T"], atol=1e-6, rtol=1e-4)
    # The potentials, with the marginals given explicitly (the other input path of the set-up).
    u, v, iterations, err = sinkhorn_potentials(case["C"], eps, case["mu"], case["nu"])
    assert iterations == case["iterations"]
    torch.testing.assert_close(u, case["u"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, case["v"], atol=1e-5, rtol=1e-5)
    # Free of the reference's rounding noise (which reaches ~1.2e-7 on converged problems), the same otherwise.
    assert err == pytest.approx(case["err_trace"][-1], abs=2e-7, rel=0.05)
    u, v, iterations, err = sinkhorn_potentials(case["C"], eps, case["mu"], case["nu"], update="reference")
    assert iterations == case["iterations"]
    torch.testing.assert_close(u, case["u"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, case["v"], atol=1e-5, rtol=1e-5)
    # The reference loop reproduces the reference's stopping statistic. The statistic is a mean of differences of
    # nearly equal float32 potentials, so it carries rounding noise of a few ulps of |u|; what must match exactly
    # is where it crosses the threshold (the iteration count).
    ulp = torch.finfo(torch.float32).eps * case["u"].abs().max().item()
    assert err == pytest.approx(case["err_trace"][-1], abs=4 * ulp)
    if case["iterations"] < 100:
        assert err < 1e-6


def test_default_arguments_are_the_reference_rule():
    case = next(c for c in GOLDEN_CASES if c["name"] == "real_2x1024x6")
    with record_sinkhorn_calls() as calls:
        plan = sinkhorn(case["C"], 0.05)  # uniform marginals, reference thresh / max_iter by default
    assert calls[0].iterations == case["iterations"] == 31
    torch.testing.assert_close(plan, case["T"], atol=1e-6, rtol=1e-4)


def test_capped_cases_keep_their_off_row_marginals():
    # The reference stops at 100 iterations here; its row sums are visibly off and must stay so.
    case = next(c for c in GOLDEN_CASES if c["name"] == "peaked_unbalanced")
    plan = sinkhorn(case["C"], case["epsilon"])
    row_err = (plan.sum(2) - 1 / plan.shape[1]).abs().max()
    ref_err = (case["T"].sum(2) - 1 / plan.shape[1]).abs().max()
    assert row_err == pytest.approx(ref_err.item(), rel=1e-2)
    torch.testing.assert_close(plan.sum(1), torch.full_like(plan.sum(1), 1 / plan.shape[2]))


def test_stopping_is_global_over_the_batch():
    # An easy problem batched with a hard one runs as many iterations as the pair needs.
    case = next(c for c in GOLDEN_CASES if c["name"] == "mixed_batch")
    with record_sinkhorn_calls() as calls:
        sinkhorn(case["C"][:1], 0.05)
        sinkhorn(case["C"], 0.05)
    assert calls[1].iterations == case["iterations"]
    assert calls[0].iterations != calls[1].iterations


def test_float32_under_autocast_and_from_half_inputs():
    torch.manual_seed(0)
    cost = 1 - torch.rand(3, 40, 5)
    ref = sinkhorn(cost, 0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plan = sinkhorn(cost.bfloat16().float(), 0.05)
    assert plan.dtype == torch.float32
    assert sinkhorn(cost.half(), 0.05).dtype == torch.float32
    torch.testing.assert_close(plan, sinkhorn(cost.bfloat16().float(), 0.05))
    assert torch.isfinite(ref).all()


def test_gradient_flows_through_the_unrolled_loop():
    torch.manual_seed(0)
    cost = (1 - torch.rand(2, 16, 3, dtype=torch.float64)).requires_grad_()
    plan = sinkhorn(cost, 0.5, max_iter=30, thresh=0.0)
    (plan * torch.randn_like(plan)).sum().backward()
    assert cost.grad is not None and torch.isfinite(cost.grad).all() and cost.grad.abs().sum() > 0


def test_bad_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(P, M, N\)"):
        sinkhorn(torch.rand(4, 5), 0.05)
