"""Batched Sinkhorn for entropic optimal transport: the reference's results, faster, with a flat-memory backward.

Default behaviour = the reference OTSeg routine's stopping rule and results: the `+1e-8` inside the logarithms of
the marginals; one scalar stopping statistic, the mean absolute change of the row potential u over *all* problems
of the batch, compared with `thresh` after each full row+column update; at most `max_iter` iterations; the plan
computed after the last column update. Released checkpoints were trained and evaluated with that rule. On the
golden fixtures of the reference (13 Sinkhorn cases, the decode head, the segmentor) every `update`, every
`check_every` and the compiled loop give identical iteration counts; the default's plans are within 2e-5 relative
of the reference's and its potentials within 6e-7 absolute.

(A quirk of that rule, kept: with `log(mu + 1e-8)` and `log(nu + 1e-8)` the two marginals' masses differ by
(M - N) * 1e-8, so the potentials drift by about eps * (M - N) * 1e-8 per iteration forever and the statistic never
goes below that, 5e-7 at M = 1024, eps = 0.05, while the plan converges. Thresholds below the floor mean max_iter.)

How it differs from the reference loop (see `sinkhorn` for the knobs; the code is split by job: update rules in
`sinkhorn_rules`, iteration drivers in `sinkhorn_loop`, the implicit backward in `sinkhorn_backward`):

* `update="scaling"` (default): the log-domain problem solved with *absorbed scalings* (Schmitzer's stabilised
  Sinkhorn). The first iteration is the reference's log-domain one (computed with max-stabilised sums); its plan
  T1 = exp(A + f1 + g1), A = -C/eps, becomes the kernel, and later iterations update scalings a, b with
  T = T1 * a_m * b_n: two batched mat-vecs per iteration instead of rebuilding and log-sum-exp-ing the (P, M, N)
  exponent twice. The potentials stay in the log domain (u = eps * (f1 + log a), v = eps * (g1 + log b)); the
  scalings are re-absorbed into them whenever they leave [e^-15, e^15], and if any non-finite value appears the
  call is redone with `update="log"`. The iterates are mathematically the reference's; they differ by float
  rounding only. The stopping statistic is a mean of differences of nearly equal potentials, so the reference's
  carries rounding noise (1.2e-7 on an already converged fixture); ours differs from it by <= 1.2% near the
  threshold on the fixtures, whose stops have >= 6% margins. On real data a count can therefore differ from the
  reference's by one iteration when the statistic lands within ~1% of `thresh`; the plan then moves by about
  one iteration's change (~1e-6 / eps relative), far below the golden tolerances.
* `update="log"`: the plain log-domain update u = eps * (log mu - LSE_n((v - C) / eps)) (the reference's "+ u"
  cancels) with -C/eps precomputed. Robust for any eps; the fallback of "scaling".
* `update="reference"`: the literal reference update, bit for bit (kept for tests and the benchmark).
* No host synchronisation per iteration where it costs: iterations run in chunks on the device, each iteration's
  statistic and potentials are kept, the host looks once per chunk, and the state of the FIRST iteration whose
  statistic crossed `thresh` is selected, so the result (and the iteration count) is exactly what a
  per-iteration check gives. `check_every="auto"` checks every iteration on the CPU (a host check costs nothing
  there; the scaling update then runs a fused loop: buffers updated in place, no per-iteration state kept) and
  sizes the chunks on accelerators from the observed linear convergence rate (a few syncs per call).
* Under `torch.compile` (or `torch.export`) the stopping rule runs inside the graph: `torch.while_loop` tests it on
  the device, so a compiled model (e.g. `OTSeg.encode_decode`) has no graph break and no host read in the
  Sinkhorn, with the same iteration counts. The scaling update's safety checks are host decisions, so a compiled
  call iterates with the log-domain update (same counts on the fixtures, plans equal to float rounding). A
  compiled call that differentiates through the iterations (`backward="unrolled"`) traces all `max_iter`
  iterations and freezes the state once the rule stops (`while_loop` has no autograd).
* `fixed_iters=n` runs n iterations with no check at all (no sync in the loop, the smallest graph; the scaling
  update looks once after the loop for non-finite values, except under torch.compile).
* `backward="implicit"` (default): a custom autograd function differentiates the returned plan implicitly (see
  `sinkhorn_backward.implicit_backward`); it saves only the plan, so training memory does not grow with the
  iteration count. `backward="unrolled"` differentiates through every iteration of the reference loop, as the
  reference does.
* Computed in float32 (float64 for float64 inputs) with autocast disabled: fp16/bf16 inputs are upcast.

Faster modes (they change results): `fixed_iters` removes every host sync, a looser `thresh` saves iterations. A
model's calls take them as an argument, `otseg.ops.SinkhornOptions` (e.g. `model.predict_scores(images,
options=InferenceOptions(sinkhorn=SinkhornOptions(fixed_iters=20)))`). How far each moves the golden fixtures, and
the demo's scores, is measured in docs/sinkhorn.md (`python bench/sinkhorn_modes.py`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from otseg.errors import BadValueError
from otseg.ops.sinkhorn_backward import ImplicitSinkhorn
from otseg.ops.sinkhorn_loop import CheckEvery, is_compiling, resolve_check_every
from otseg.ops.sinkhorn_loop import solve as solve_loop
from otseg.ops.sinkhorn_rules import Problem, Run, prepare

__all__ = [
    "SinkhornInfo",
    "record_sinkhorn_calls",
    "sinkhorn",
    "sinkhorn_potentials",
]

Update = Literal["scaling", "log", "reference"]
Backward = Literal["implicit", "unrolled"]


@dataclass
class SinkhornInfo:
    """Diagnostics of one Sinkhorn call.

    Attributes:
        shape: (P, M, N) of the cost.
        iterations: number of row+column updates that count (the reference's iteration count).
        error: the stopping statistic after the last counted iteration (mean |u - u_prev| over the batch);
            nan when no iteration ran.
        row_marginal_error: max over problems of sum_m |sum_n T_mn - mu_m| (columns are exact after the last
            column update; rows are off by up to this much).
        syncs: host synchronisations made by the call: one per chunk of iterations; with `fixed_iters` none in
            the loop, plus one after it for the scaling update's overflow check (skipped under torch.compile).
            A recorder adds one more to read these diagnostics.
        update: the update rule that produced the plan ("scaling", "log" or "reference").
        backward: "implicit", "unrolled", or None when no gradient was recorded.
        fallback: True when the scaling update met a non-finite value and the call was redone with "log".
    """

    shape: tuple[int, int, int]
    iterations: int
    error: float
    row_marginal_error: float | None = None
    syncs: int | None = None
    update: str = "scaling"
    backward: str | None = None
    fallback: bool = False


# Per-context state (a contextvar, not a module global): a recorder opened in one thread or task (e.g. one request
# of the web server) does not see the calls made in another. Diagnostics only: settings are arguments, never state.
_RECORDERS: contextvars.ContextVar[tuple[list[SinkhornInfo], ...]] = contextvars.ContextVar(
    "otseg_sinkhorn_recorders", default=()
)


@contextlib.contextmanager
def record_sinkhorn_calls() -> Iterator[list[SinkhornInfo]]:
    """Collect a `SinkhornInfo` for every `sinkhorn` call made inside the block (diagnostics, tests).

    Recording costs one extra host synchronisation and one pass over each plan per call.

    Example:
        >>> with record_sinkhorn_calls() as calls:
        ...     model(images)
        >>> [c.iterations for c in calls]
    """
    calls: list[SinkhornInfo] = []
    token = _RECORDERS.set((*_RECORDERS.get(), calls))
    try:
        yield calls
    finally:
        _RECORDERS.reset(token)


# ------------------------------------------------------------------------------------------------ settings
def _default_update(unrolled: bool) -> Update:
    """The update rule when none is asked for, the same for `sinkhorn` and `sinkhorn_potentials`: the scaling
    update, or the literal reference loop where gradients flow through the iterations (unrolled)."""
    return "reference" if unrolled else "scaling"


# ------------------------------------------------------------------------------------------------ public API
def sinkhorn_potentials(
    cost: Tensor,
    eps: float,
    mu: Tensor | None = None,
    nu: Tensor | None = None,
    max_iter: int = 100,
    thresh: float = 1e-6,
    *,
    update: Update | None = None,
    check_every: CheckEvery = "auto",
    fixed_iters: int | None = None,
) -> tuple[Tensor, Tensor, int, float]:
    """Run the Sinkhorn loop and return its dual potentials (the update rule defaults as `sinkhorn`'s does).

    Args:
        cost: (P, M, N) transport costs of P independent problems.
        eps: entropic regularisation.
        mu: (P, M) row marginals; uniform 1/M if None.
        nu: (P, N) column marginals; uniform 1/N if None.
        max_iter: iteration cap.
        thresh: stop once mean |u - u_prev| over the whole batch is below this.
        update: as `sinkhorn`'s default: "scaling", or "reference" when an input requires grad (the literal
            reference loop, bit for bit, stopping statistic included; differentiable through the unrolled
            iterations); or "log". The scaling and log statistics are free of the reference's rounding noise
            (e.g. ~6e-9 where the reference reports 1.2e-7 for an already converged problem): ask for
            "reference" to reproduce its statistic.
        check_every, fixed_iters: see `sinkhorn`.

    Returns:
        u (P, M), v (P, N), iterations run, last stopping statistic (with `fixed_iters` it is read after the
        loop). The plan is exp((u_m + v_n - C_mn)/eps).
    """
    prob = prepare(cost, eps, mu, nu)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (cost, mu, nu))
    if update is None:  # `sinkhorn`'s rule: gradients through the iterations need the literal loop
        update = _default_update(unrolled=needs_grad)
    if update == "scaling" and needs_grad:
        raise BadValueError("update='scaling' is not differentiable through its iterations; use 'reference' or 'log'")
    check = resolve_check_every(check_every, cost.device)
    with torch.autocast(device_type=cost.device.type, enabled=False):
        rule, run, _ = solve_loop(prob, update, max_iter, thresh, check, fixed_iters, differentiable=needs_grad)
        u, v = rule.potentials(run.state)
    err = run.err.item() if isinstance(run.err, Tensor) else run.err
    iterations = int(run.iterations)  # (a host read under torch.compile: the count is a Python int here)
    return u, v, iterations, err


def sinkhorn(
    cost: Tensor,
    eps: float = 0.05,
    mu: Tensor | None = None,
    nu: Tensor | None = None,
    max_iter: int = 100,
    thresh: float = 1e-6,
    *,
    update: Update | None = None,
    backward: Backward = "implicit",
    check_every: CheckEvery = "auto",
    fixed_iters: int | None = None,
) -> Tensor:
    """Entropic optimal-transport plan between M rows and N columns, for P problems at once.

    Solves min_T <T, C> - eps * H(T) s.t. T 1 = mu, T^T 1 = nu in the log domain, with the reference's stopping
    rule (module docstring). Computed in float32 (float64 for float64 inputs) whatever the autocast state:
    potentials reach |(u + v - C)/eps| ~ 40.

    Args:
        cost: (P, M, N). In OTSeg, C = 1 - cosine similarity between M pixels and N prompts, P = B*K.
        eps: entropic regularisation (the reference uses 0.05).
        mu: (P, M) row marginals, default uniform 1/M.
        nu: (P, N) column marginals, default uniform 1/N.
        max_iter, thresh: the reference stopping rule (at most `max_iter` iterations; stop after the first
            iteration whose batch-global mean |u - u_prev| is below `thresh`).
        update: "scaling" (default with the implicit backward), "log", or "reference" (the literal reference
            loop; default with the unrolled backward).
        backward: "implicit" (default): gradients by implicit differentiation of the returned plan, memory
            independent of the iteration count (gradients with respect to mu/nu are not provided this way: a call
            whose marginals require grad runs "unrolled"). "unrolled": autograd through every iteration, as the
            reference (memory grows with the iteration count).
        check_every: iterations between host checks of the stopping rule: an int, "adaptive" (chunk lengths
            predicted from the convergence rate), or "auto" (1 on the CPU, "adaptive" elsewhere). Results do not
            depend on it. Under torch.compile there is no host check: the rule is tested in the graph.
        fixed_iters: run exactly this many iterations and never check (ignores max_iter/thresh): no host sync in
            the loop (the scaling update checks once after it for inf/nan, not under compile), traceable by
            torch.compile (fullgraph). A faster mode that changes results: see the module docstring.

    Returns:
        plan T: (P, M, N) float32 (float64 for float64 costs). Column sums equal nu (+1e-8) to float precision;
        row sums approximately mu.
    """
    if backward not in ("implicit", "unrolled"):
        raise BadValueError(f"unknown sinkhorn backward {backward!r}; use 'implicit' or 'unrolled'")
    prob = prepare(cost, eps, mu, nu)
    check = resolve_check_every(check_every, cost.device)
    grad_cost = torch.is_grad_enabled() and cost.requires_grad
    grad_marginals = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (mu, nu))
    if grad_marginals:
        backward = "unrolled"
    update = update or _default_update(unrolled=backward == "unrolled")
    if backward == "unrolled" and update == "scaling" and (grad_cost or grad_marginals):
        raise BadValueError("backward='unrolled' needs update='reference' or 'log' (the scaling update is in place)")

    result: dict[str, Any] = {}

    def solve() -> Tensor:
        differentiable = used_backward == "unrolled"
        rule, run, fell_back = solve_loop(prob, update, max_iter, thresh, check, fixed_iters, differentiable)
        result.update(run=run, rule=rule, fallback=fell_back)
        return rule.plan(run.state)

    used_backward: str | None = None
    if grad_cost or grad_marginals:
        used_backward = "implicit" if grad_cost and backward == "implicit" and not grad_marginals else "unrolled"
    with torch.autocast(device_type=cost.device.type, enabled=False):
        if used_backward == "implicit":
            plan = ImplicitSinkhorn.apply(prob.cost, solve, prob.eps)
        elif used_backward == "unrolled":
            plan = solve()
        else:
            with torch.no_grad():
                plan = solve()
    recorders = () if is_compiling() else _RECORDERS.get()  # (nor can a compiled region record its calls)
    if recorders:
        _record(prob, plan, result, used_backward, recorders)
    return plan


def _record(
    prob: Problem,
    plan: Tensor,
    result: dict[str, Any],
    used_backward: str | None,
    recorders: tuple[list[SinkhornInfo], ...],
) -> None:
    run: Run = result["run"]
    with torch.no_grad():
        p, m, _ = plan.shape
        row_target = prob.mu if prob.mu is not None else plan.new_full((p, m), 1.0 / m)
        row_err = (plan.sum(dim=2) - row_target).abs().sum(dim=1).amax()
        err = run.err if isinstance(run.err, Tensor) else torch.tensor(run.err)
        err_value, row_value = torch.stack([err.to(row_err), row_err]).tolist()
    cost_p, cost_m, cost_n = prob.cost.shape
    info = SinkhornInfo(
        shape=(cost_p, cost_m, cost_n),
        iterations=int(run.iterations),
        error=err_value,
        row_marginal_error=row_value,
        syncs=run.syncs,
        update=result["rule"].name,
        backward=used_backward,
        fallback=result["fallback"],
    )
    for rec in recorders:
        rec.append(info)
