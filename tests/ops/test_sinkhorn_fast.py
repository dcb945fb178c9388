"""The fast Sinkhorn: exact reproduction of the reference (iteration counts included) with every update rule and
chunked host checks, the implicit backward against the unrolled one, flat memory, autocast; and the FLOP counters of
`otseg bench` (otseg.benchmark). torch.compile: test_sinkhorn_compile.py."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import load_golden
from otseg.benchmark import efficiency_table, format_table, full_macs, mmcv_style_macs
from otseg.cli import bench as bench_command
from otseg.config import HeadConfig
from otseg.model.head import OTSegHead
from otseg.model.inference_options import InferenceOptions
from otseg.model_files.reference_pth import map_reference_key
from otseg.ops import SinkhornOptions, record_sinkhorn_calls, sinkhorn, sinkhorn_potentials, sinkhorn_rules
from otseg.ops.sinkhorn_backward import implicit_backward

GOLDEN_CASES = load_golden("sinkhorn.pt")["cases"]
CHECKS = [1, 3, 7, "adaptive"]


def _ids(cases):
    return [c["name"] for c in cases]


def _marginals(case):
    uniform = torch.allclose(case["mu"], torch.full_like(case["mu"], 1 / case["mu"].shape[1]))
    return (None if uniform else case["mu"]), case["nu"]


def literal_reference(cost, eps, mu=None, nu=None, max_iter=100, thresh=1e-6):
    """The reference loop exactly as the official code writes it (per-iteration .item())."""
    p, m, n = cost.shape
    mu = torch.full((p, m), 1.0 / m) if mu is None else mu
    nu = torch.full((p, n), 1.0 / n) if nu is None else nu
    u, v = torch.zeros_like(mu), torch.zeros_like(nu)
    iterations = 0
    for _ in range(max_iter):
        u0 = u
        k = (-cost + u.unsqueeze(2) + v.unsqueeze(1)) / eps
        u = eps * (torch.log(mu + 1e-8) - torch.logsumexp(k, dim=2)) + u
        k = (-cost + u.unsqueeze(2) + v.unsqueeze(1)) / eps
        v = eps * (torch.log(nu + 1e-8) - torch.logsumexp(k.transpose(-2, -1), dim=2)) + v
        iterations += 1
        if (u - u0).abs().mean().item() < thresh:
            break
    return torch.exp((-cost + u.unsqueeze(2) + v.unsqueeze(1)) / eps), u, v, iterations


def cosine_cost(p, m, n, dim=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(p, m, dim, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(p, n, dim, generator=g, dtype=torch.float64), dim=-1)
    return (1 - torch.einsum("pmd,pnd->pmn", x, y)).to(dtype)


# ------------------------------------------------------------------------------------------------ exactness
# The default (scaling) update on every golden case: tests/ops/test_sinkhorn.py.
@pytest.mark.parametrize("case", GOLDEN_CASES, ids=_ids(GOLDEN_CASES))
def test_log_update_reproduces_every_golden_case(case):
    mu, nu = _marginals(case)
    with record_sinkhorn_calls() as calls:
        plan = sinkhorn(case["C"], case["epsilon"], mu=mu, nu=nu, update="log")
    info = calls[0]
    assert info.iterations == case["iterations"] and info.syncs == info.iterations
    assert info.update == "log" and not info.fallback
    assert plan.dtype == torch.float32
    torch.testing.assert_close(plan, case["T"], atol=1e-6, rtol=1e-4)
    u, v, iterations, err = sinkhorn_potentials(case["C"], case["epsilon"], case["mu"], case["nu"], update="log")
    assert iterations == case["iterations"]
    torch.testing.assert_close(u, case["u"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, case["v"], atol=1e-5, rtol=1e-5)
    assert err == pytest.approx(case["err_trace"][-1], abs=2e-7, rel=0.05)


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=_ids(GOLDEN_CASES))
def test_chunked_checks_select_the_first_crossing_iteration(case):
    """Host checks every few iterations keep each iteration's state and pick the first whose statistic crossed:
    the literal loop's results bit for bit at every chunking (the selection does not depend on the rule; the
    log rule has no chunk hooks), and the scaling update's counts and plans with its safety checks between
    chunks (absorption, overflow) at chunk ends other than every iteration."""
    mu, nu = _marginals(case)
    expected, u_ref, v_ref, iterations = literal_reference(case["C"], case["epsilon"], mu, nu)
    assert iterations == case["iterations"]
    for check in CHECKS:
        with record_sinkhorn_calls() as calls:
            plan = sinkhorn(case["C"], case["epsilon"], mu=mu, nu=nu, update="reference", check_every=check)
        assert calls[0].iterations == iterations
        assert torch.equal(plan, expected), check
        if isinstance(check, int):
            assert calls[0].syncs == math.ceil(iterations / check)
        else:
            assert calls[0].syncs <= iterations // 4 + 2
        u, v, it, _ = sinkhorn_potentials(case["C"], case["epsilon"], mu, nu, update="reference", check_every=check)
        assert it == iterations and torch.equal(u, u_ref) and torch.equal(v, v_ref)
    for check in CHECKS[1:]:
        with record_sinkhorn_calls() as calls:
            plan = sinkhorn(case["C"], case["epsilon"], mu=mu, nu=nu, check_every=check)
        assert calls[0].iterations == iterations and calls[0].update == "scaling" and not calls[0].fallback
        torch.testing.assert_close(plan, case["T"], atol=1e-6, rtol=1e-4)


def test_sinkhorn_and_sinkhorn_potentials_default_to_the_same_update():
    case = GOLDEN_CASES[0]
    defaults = sinkhorn_potentials(case["C"], case["epsilon"])
    scaling = sinkhorn_potentials(case["C"], case["epsilon"], update="scaling")
    reference = sinkhorn_potentials(case["C"], case["epsilon"], update="reference")
    assert torch.equal(defaults[0], scaling[0]) and defaults[3] == scaling[3]
    assert defaults[3] != reference[3]  # the two rules' statistics differ, so the comparison can tell them apart
    with record_sinkhorn_calls() as calls:
        sinkhorn(case["C"], case["epsilon"])
    assert calls[0].update == "scaling"
    cost = case["C"].clone().requires_grad_(True)  # gradients through the iterations: the literal loop
    with_grad = sinkhorn_potentials(cost, case["epsilon"])
    assert torch.equal(with_grad[0].detach(), reference[0])


def test_default_is_the_scaling_update_with_one_check_per_iteration_on_cpu():
    case = GOLDEN_CASES[0]
    with record_sinkhorn_calls() as calls:
        sinkhorn(case["C"], case["epsilon"])
    assert calls[0].update == "scaling"
    assert calls[0].syncs == calls[0].iterations == case["iterations"]
    with record_sinkhorn_calls() as calls:
        sinkhorn(case["C"], case["epsilon"], check_every="adaptive")
    assert calls[0].syncs <= 4 and calls[0].iterations == case["iterations"]


def test_fixed_iters_makes_no_sync_in_the_loop_and_runs_exactly_that_many_iterations():
    case = GOLDEN_CASES[0]
    for update in ("scaling", "log", "reference"):
        with record_sinkhorn_calls() as calls:
            plan = sinkhorn(case["C"], case["epsilon"], fixed_iters=case["iterations"], update=update)
        # the scaling update's single look after the loop (overflow guard) is the only sync
        assert calls[0].syncs == (1 if update == "scaling" else 0)
        assert calls[0].iterations == case["iterations"]
        torch.testing.assert_close(plan, case["T"], atol=1e-6, rtol=1e-4)


def test_info_reports_marginal_errors():
    case = next(c for c in GOLDEN_CASES if c["name"] == "peaked_unbalanced")
    with record_sinkhorn_calls() as calls:
        plan = sinkhorn(case["C"], case["epsilon"])
    m = plan.shape[1]
    expected = (case["T"].sum(2) - 1 / m).abs().sum(1).max().item()
    assert calls[0].row_marginal_error == pytest.approx(expected, rel=1e-2)
    assert calls[0].backward is None


def test_fixed_iters_and_a_looser_thresh_change_the_iteration_count():
    case = GOLDEN_CASES[0]
    with record_sinkhorn_calls() as calls:
        sinkhorn(case["C"], case["epsilon"], max_iter=100, fixed_iters=5)
    assert calls[0].iterations == 5 and calls[0].syncs == 1
    with record_sinkhorn_calls() as calls:
        sinkhorn(case["C"], case["epsilon"], thresh=1e-4)
    assert calls[0].iterations < case["iterations"]


def test_scaling_update_falls_back_to_the_log_domain_on_non_finite_values(monkeypatch):
    # The first iteration is max-stabilised and its plan becomes the kernel, so real costs do not overflow the
    # scalings (they are re-absorbed past e^15); force an overflow to check the safety net, in the fused
    # per-iteration loop (check 1) and in the chunked driver (check 5).
    case = GOLDEN_CASES[0]
    original = sinkhorn_rules.ScalingRule.update

    def overflowing(self, b, a, a_col, log_a, k_a, k_a_row):
        original(self, b, a, a_col, log_a, k_a, k_a_row)
        k_a.mul_(float("inf"))  # the new b is k_a's memory

    monkeypatch.setattr(sinkhorn_rules.ScalingRule, "update", overflowing)
    for check in (1, 5):
        with record_sinkhorn_calls() as calls:
            plan = sinkhorn(case["C"], case["epsilon"], check_every=check)
        assert calls[0].fallback and calls[0].update == "log" and calls[0].iterations == case["iterations"]
        torch.testing.assert_close(plan, case["T"], atol=1e-6, rtol=1e-4)


def test_absorbing_the_scalings_leaves_the_results_unchanged(monkeypatch):
    # Real costs rarely push the scalings past e^15; a threshold of 0 re-absorbs them at every look, so the
    # kernel is rebuilt many times. Plans, potentials and iteration counts must not notice.
    absorbed = []
    original = sinkhorn_rules.ScalingRule._absorb_frame

    def counting(self, log_a, b):
        absorbed.append(1)
        return original(self, log_a, b)

    monkeypatch.setattr(sinkhorn_rules, "ABSORB_LOG", 0.0)
    monkeypatch.setattr(sinkhorn_rules.ScalingRule, "_absorb_frame", counting)
    for case in GOLDEN_CASES[:4]:
        for check in (1, 3):
            with record_sinkhorn_calls() as calls:
                plan = sinkhorn(case["C"], case["epsilon"], check_every=check)
            u, v, iters, _ = sinkhorn_potentials(case["C"], case["epsilon"], update="scaling", check_every=check)
            assert calls[0].update == "scaling" and not calls[0].fallback
            assert calls[0].iterations == iters == case["iterations"]
            torch.testing.assert_close(plan, case["T"], atol=1e-6, rtol=1e-4)
            log_plan = sinkhorn(case["C"], case["epsilon"], update="log")
            torch.testing.assert_close(plan, log_plan, atol=1e-7, rtol=1e-4)
            u_log, v_log, _, _ = sinkhorn_potentials(case["C"], case["epsilon"], update="log")
            torch.testing.assert_close(u, u_log, atol=1e-6, rtol=0)
            torch.testing.assert_close(v, v_log, atol=1e-6, rtol=0)
    assert len(absorbed) > 10


def test_tiny_eps_stays_finite_and_matches_the_log_domain():
    # eps = 0.005 with costs 0 / 1: exp(-200) underflows in float32, yet the stabilised first iteration copes.
    cost = torch.ones(2, 30, 3)
    cost[:, :, 0] = 0.0
    cost[:, :5, 1] = 0.6
    with record_sinkhorn_calls() as calls:
        plan = sinkhorn(cost, 0.005, max_iter=20)
    assert not calls[0].fallback and torch.isfinite(plan).all()
    torch.testing.assert_close(plan, sinkhorn(cost, 0.005, max_iter=20, update="log"), atol=1e-7, rtol=1e-4)


def test_zero_iterations_give_the_gibbs_kernel():
    cost = cosine_cost(2, 10, 3)
    for update in ("scaling", "log", "reference"):
        torch.testing.assert_close(sinkhorn(cost, 0.5, max_iter=0, update=update), torch.exp(-cost / 0.5))


def test_bad_arguments_are_clear_errors():
    cost = cosine_cost(2, 10, 3)
    with pytest.raises(ValueError, match="check_every"):
        sinkhorn(cost, 0.05, check_every=0)
    with pytest.raises(ValueError, match="update"):
        sinkhorn(cost, 0.05, update="fast")
    with pytest.raises(ValueError, match="backward"):
        sinkhorn(cost, 0.05, backward="adjoint")
    with pytest.raises(ValueError, match="unrolled"):
        sinkhorn(cost.requires_grad_(), 0.05, update="scaling", backward="unrolled")


# ------------------------------------------------------------------------------------------------ the model path
def _golden_head():

    g = load_golden("decode_head.pt")
    c = g["config"]
    cfg = HeadConfig(
        embed_dim=c["embed_dims"],
        num_layers=c["num_layers"],
        num_heads=c["num_heads"],
        ffn_dim=4 * c["embed_dims"],
        output_size=c["img_size"],
        dropout=0.0,
        attn_dropout=0.0,
    )
    head = OTSegHead(cfg)
    state = {}
    for key, value in g["state_dict"].items():
        ours, _ = map_reference_key("decode_head." + key)
        if ours is not None:
            state[ours.removeprefix("head.")] = value
    head.load_state_dict(state, strict=True)
    return head.eval(), g


def test_decode_head_golden_with_chunked_checks():
    # "adaptive": chunks of 4 first, then sized from the convergence rate (so also other lengths).
    head, g = _golden_head()
    x, ref = g["inputs"], g["results"]["eval_inductive"]
    seen = torch.tensor([True, True, True, False, False])
    adaptive = InferenceOptions(sinkhorn=SinkhornOptions(check_every="adaptive"))
    with torch.no_grad(), record_sinkhorn_calls() as calls:
        pred = head.predict(x["visual"], x["cls_token"], x["text"], seen, adaptive)
    assert [c.iterations for c in calls] == [c["iterations"] for c in ref["sinkhorn_calls"]]
    assert all(c.syncs is not None and c.syncs < c.iterations for c in calls)  # chunked: the option reached the loop
    torch.testing.assert_close(pred, ref["pred"], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ gradients
def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# Finite differences against the implicit formula in two regimes: a soft plan (eps 0.5) and the reference's eps with
# a batch of 3 and N = 4. Larger shapes cost seconds each here (the Jacobian has (P M N)^2 entries); the test below
# carries the formula to them (and to eps 0.1, N = 6 and 8) through the unrolled gradient.
@pytest.mark.parametrize(("p", "m", "n", "eps"), [(2, 12, 3, 0.5), (3, 8, 4, 0.05)])
def test_implicit_gradient_passes_gradcheck_in_float64(p, m, n, eps):
    cost = cosine_cost(p, m, n, dtype=torch.float64).requires_grad_()
    # 300 iterations converge these plans to float64 precision. (A threshold cannot: with the reference's +1e-8 in
    # log(mu + 1e-8) the marginals' masses differ by (M - N) * 1e-8, so the statistic bottoms out near
    # eps * (M - N) * 1e-8, while the plan itself converges.)
    assert torch.autograd.gradcheck(lambda c: sinkhorn(c, eps, fixed_iters=300), (cost,), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize(("p", "m", "n", "eps"), [(2, 12, 3, 0.5), (3, 20, 4, 0.1), (2, 24, 6, 0.05), (2, 64, 8, 0.05)])
def test_implicit_gradient_equals_the_unrolled_one_at_convergence(p, m, n, eps):
    cost = cosine_cost(p, m, n, seed=1, dtype=torch.float64).requires_grad_()
    weights = torch.randn(p, m, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tight = {"fixed_iters": 300}  # converged to float64 precision
    (implicit,) = torch.autograd.grad((sinkhorn(cost, eps, **tight) * weights).sum(), cost)
    (unrolled,) = torch.autograd.grad((sinkhorn(cost, eps, backward="unrolled", **tight) * weights).sum(), cost)
    assert _rel(implicit, unrolled) <= 1e-4


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=_ids(GOLDEN_CASES))
def test_implicit_gradient_against_autograd_through_the_reference_rule(case):
    """float32, reference stopping rule: the two differ by the distance to convergence, no more."""
    if _marginals(case)[0] is not None:
        pytest.skip("marginal gradients are the unrolled path's business")
    eps = case["epsilon"]
    weights = torch.randn(case["C"].shape, generator=torch.Generator().manual_seed(3))
    cost = case["C"].clone().requires_grad_()
    with record_sinkhorn_calls() as calls:
        loss = (sinkhorn(cost, eps) * weights).sum()
    assert calls[0].backward == "implicit"
    (implicit,) = torch.autograd.grad(loss, cost)
    (unrolled,) = torch.autograd.grad((sinkhorn(cost, eps, backward="unrolled") * weights).sum(), cost)
    plan = case["T"]
    scale = (plan * weights.abs()).norm().item() / eps  # the size of a typical gradient of this loss
    diff = (implicit - unrolled).norm().item()
    if case["iterations"] < 100:  # converged by the reference's rule
        assert diff <= 1e-3 * scale
    else:  # capped at 100 iterations: neither is the converged gradient, they still agree to a few percent
        assert diff <= 0.1 * scale


def test_implicit_backward_reduces_to_row_softmax_for_one_column_block():
    # N = 1: the plan is fixed by the marginals, so the gradient vanishes.
    plan = torch.full((2, 5, 1), 0.2, dtype=torch.float64)
    grad = implicit_backward(plan, torch.randn(2, 5, 1, dtype=torch.float64), 0.1)
    assert grad.abs().max() < 1e-12


def test_marginals_that_require_grad_use_the_unrolled_backward():
    cost = cosine_cost(2, 16, 3)
    mu = torch.full((2, 16), 1 / 16, requires_grad=True)
    with record_sinkhorn_calls() as calls:
        plan = sinkhorn(cost, 0.5, mu=mu)
    (plan * torch.randn_like(plan)).sum().backward()
    assert calls[0].backward == "unrolled" and calls[0].update == "reference"
    assert mu.grad is not None and torch.isfinite(mu.grad).all()


def test_half_inputs_get_float32_plans_and_gradients_of_their_dtype():
    cost = cosine_cost(2, 16, 3).half().requires_grad_()
    plan = sinkhorn(cost, 0.05)
    assert plan.dtype == torch.float32
    (plan * torch.randn_like(plan)).sum().backward()
    assert cost.grad.dtype == torch.float16 and torch.isfinite(cost.grad).all()


# ------------------------------------------------------------------------------------------------ memory
def _saved_bytes(fn: Callable[[], torch.Tensor]) -> tuple[int, int, torch.Tensor]:
    """(number, total bytes) of tensors the autograd graph of fn() saves for backward, and fn()'s output."""
    count, total = 0, 0

    def pack(t):
        nonlocal count, total
        count += 1
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return count, total, out


def test_implicit_backward_memory_does_not_grow_with_iterations():
    cost = cosine_cost(4, 256, 8).requires_grad_()
    plan_bytes = 4 * 256 * 8 * 4
    saved = {k: _saved_bytes(lambda k=k: sinkhorn(cost, 0.05, fixed_iters=k))[:2] for k in (5, 50)}
    assert saved[5] == saved[50] == (1, plan_bytes)  # the plan, nothing else
    unrolled = {
        k: _saved_bytes(lambda k=k: sinkhorn(cost, 0.05, fixed_iters=k, backward="unrolled"))[:2] for k in (5, 50)
    }
    assert unrolled[50][1] > 8 * unrolled[5][1] > 8 * 5 * plan_bytes  # the reference: several plans per iteration


def test_no_autograd_graph_in_inference():
    cost = cosine_cost(2, 16, 3)
    assert not sinkhorn(cost, 0.05).requires_grad
    with torch.no_grad():
        assert not sinkhorn(cost.requires_grad_(), 0.05).requires_grad


# ------------------------------------------------------------------------------------------------ autocast
def test_float32_under_autocast_with_gradients():
    cost = cosine_cost(3, 40, 5)
    expected = sinkhorn(cost, 0.05)
    leaf = cost.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plan = sinkhorn(leaf, 0.05)
        loss = (plan * torch.linspace(0, 1, plan.numel()).reshape(plan.shape)).sum()
    assert plan.dtype == torch.float32
    torch.testing.assert_close(plan, expected, atol=0, rtol=0)
    loss.backward()
    assert leaf.grad.dtype == torch.float32 and torch.isfinite(leaf.grad).all()


def clustered_cost(p, m, n, centres=2, seed=0):
    """Trained-like costs: pixels around a few prompt mixtures (needs tens of iterations, like trained models)."""
    g = torch.Generator().manual_seed(seed)
    prompts = F.normalize(torch.randn(p, n, 64, generator=g), dim=-1)
    w = torch.softmax(2 * torch.randn(p, centres, n, generator=g), dim=-1)
    c = F.normalize(torch.einsum("pcn,pnd->pcd", w, prompts), dim=-1)
    pix = c.gather(1, torch.randint(0, centres, (p, m, 1), generator=g).expand(-1, -1, 64))
    pix = F.normalize(pix + 0.1 * torch.randn(p, m, 64, generator=g) / 8, dim=-1)
    return 1 - torch.einsum("pmd,pnd->pmn", pix, prompts)


def test_implicit_gradient_matches_the_unrolled_reference_on_trained_like_costs():
    # At the reference's stopping rule (float32) the two differ by the distance to convergence: 1e-5 here.
    cost = clustered_cost(8, 256, 8)
    weights = torch.randn(cost.shape, generator=torch.Generator().manual_seed(5))
    with record_sinkhorn_calls() as calls:
        leaf_i = cost.clone().requires_grad_()
        (sinkhorn(leaf_i, 0.05) * weights).sum().backward()
        leaf_u = cost.clone().requires_grad_()
        (sinkhorn(leaf_u, 0.05, backward="unrolled") * weights).sum().backward()
    assert 20 < calls[0].iterations == calls[1].iterations < 100
    assert _rel(leaf_i.grad, leaf_u.grad) <= 1e-4


# ---------------------------------------------------------------------------------------------- `otseg bench` counters
def test_efficiency_counters_follow_mmcv_rules_and_count_attention():

    class SubLinear(nn.Linear):  # a subclass: mmcv does not count it
        pass

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 2, stride=2)  # 4x4 -> 2x2 positions
            self.norm = nn.LayerNorm(4)
            self.fc = nn.Linear(4, 6, bias=False)
            self.sub = SubLinear(4, 6)
            self.relu = nn.ReLU()

        def forward(self, x):
            y = self.conv(x).flatten(2).transpose(1, 2)  # (1, 4, 4)
            y = self.relu(self.norm(y))
            q = y[:, None]  # (1, 1, 4, 4): one head
            y = F.scaled_dot_product_attention(q, q, q)[:, 0]
            return self.fc(y) + self.sub(y)

    toy, x = Toy(), torch.randn(1, 3, 4, 4)
    total, groups = mmcv_style_macs(toy, lambda: toy(x))
    conv = (2 * 2 * 3 * 4) * 4 + 4 * 4  # per position x positions + bias
    assert total == conv + 16 * 2 + 16 * 6 + 16  # + LayerNorm (affine: x2) + Linear + ReLU; SubLinear skipped
    assert groups == {"conv": conv, "norm": 32, "fc": 96, "relu": 16}
    full, _ = full_macs(toy, lambda: toy(x))
    attention = 2 * 4 * 4 * 4  # QK^T and AV, one head, 4 tokens, width 4
    assert full == (2 * 2 * 3 * 4) * 4 + attention + 2 * 16 * 6  # conv, attention (CPU SDPA counted), 2 linears
    assert all(p.requires_grad for p in toy.parameters())  # restored after counting

    row = {
        "name": "OTSeg+", "prompts": 6, "trainable_params": 10_666_240, "total_params": 97_494_784,
        "gmacs_mmcv": 69.2, "gmacs_mmcv_reference_types": 61.9, "gmacs_full": 111.8, "sinkhorn_calls": 4,
        "sinkhorn_iterations": 4.2, "sec_per_image": 2.0, "cpu_sec_per_image": 1.9, "images_per_second": 0.5,
        "overhead": 0.01, "head_ms": 80.0, "head_overhead": 0.017, "device": "CPU, 1 thread(s)", "image_size": 512,
        "repeats": 3, "timing": "process CPU time",
    }  # fmt: skip
    table = format_table([row])
    assert "| OTSeg+ | 6 | 10.67 M | 97.49 M | 69.20 / 61.90 | 111.8 | 4 x 4.2 |" in table
    parser = argparse.ArgumentParser()
    bench_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "--device", "cpu", "--repeats", "2", "--no-capped"])
    assert args.repeats == 2 and args.no_capped and callable(args.run)


def test_efficiency_table_forces_the_default_loop_to_its_cap():
    # A small image keeps this to seconds; what is checked is the protocol, not the speed.

    rows = efficiency_table(image_size=64, repeats=1, warmup=0)
    by_name = {r["name"]: r for r in rows}
    assert len(rows) == 3 and by_name["ZegCLIP-style baseline"]["sinkhorn_calls"] == 0
    assert "sec_per_image_capped" not in by_name["ZegCLIP-style baseline"]
    for name in ("OTSeg", "OTSeg+"):
        row = by_name[name]
        assert 0 < row["sinkhorn_iterations"] < 100  # random weights converge quickly...
        assert row["sinkhorn_iterations_capped"] == 100  # ...and the capped options make every call run to the cap
        assert row["head_ms_capped"] > 0 and math.isfinite(row["head_overhead_capped"])
    assert by_name["OTSeg+"]["sinkhorn_calls"] == by_name["OTSeg"]["sinkhorn_calls"] + 1  # the MPS path
    assert "| OTSeg+ | 6 |" in format_table(rows) and "| 100, " in format_table(rows)
