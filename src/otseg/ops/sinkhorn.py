"""Batched Sinkhorn for entropic optimal transport: the reference's results, faster, with a flat-memory backward.

Default behaviour = the reference OTSeg routine's stopping rule and results: the `+1e-8` inside the logarithms of
the marginals; one scalar stopping statistic, the mean absolute change of the row potential u over *all* problems
of the batch, compared with `thresh` after each full row+column update; at most `max_iter` iterations; the plan
computed after the last column update. Released checkpoints were trained and evaluated with that rule. On the
golden fixtures of the reference (13 Sinkhorn cases, the decode head, the segmentor) every `update` and every
`check_every` gives identical iteration counts; the default's plans are within 2e-5 relative of the reference's
and its potentials within 6e-7 absolute.

(A quirk of that rule, kept: with `log(mu + 1e-8)` and `log(nu + 1e-8)` the two marginals' masses differ by
(M - N) * 1e-8, so the potentials drift by about eps * (M - N) * 1e-8 per iteration forever and the statistic never
goes below that, 5e-7 at M = 1024, eps = 0.05, while the plan converges. Thresholds below the floor mean max_iter.)

How it differs from the reference loop (see `sinkhorn` for the knobs):

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
* No host synchronisation per iteration: iterations run in chunks on the device, each iteration's statistic and
  potentials are kept, the host looks once per chunk, and the state of the FIRST iteration whose statistic
  crossed `thresh` is selected, so the result (and the iteration count) is exactly what a per-iteration check
  gives. `check_every="auto"` checks every iteration on the CPU (a host check costs nothing there) and sizes the
  chunks on accelerators from the observed linear convergence rate (a few syncs per call). `fixed_iters=n` runs
  n iterations with no check at all (no sync in the loop, `torch.compile`-friendly; the scaling update looks once
  after the loop for non-finite values, except under torch.compile).
* `backward="implicit"` (default): a custom autograd function differentiates the returned plan implicitly (see
  `_implicit_backward`); it saves only the plan, so training memory does not grow with the iteration count.
  `backward="unrolled"` differentiates through every iteration of the reference loop, as the reference does.
* Computed in float32 (float64 for float64 inputs) with autocast disabled: fp16/bf16 inputs are upcast.

Faster modes (they change results; apply them to a whole model with `sinkhorn_overrides`). How far they move the
golden fixtures (tiny random-weight models, whose reference runs stop after 17-18 iterations; worst cases; the
golden tolerance is atol 1e-5 + rtol 1e-4 on scores):

    mode              Sinkhorn cases*: max|dT|/max T   decode head scores   segmentor scores   argmax changed
    default           2.2e-6                            1.2e-7               2.4e-7             0
    fixed_iters=50    8.0e-5                            8.5e-6               1.3e-5             0.01 % of pixels
    fixed_iters=20    4.6e-3                            6.3e-6               5.4e-6             0
    fixed_iters=10    8.3e-2                            2.0e-4               6.1e-4             0.07 %
    thresh=1e-5       7.7e-4                            7.4e-5               7.5e-5             0.02 %
    thresh=1e-4       8.4e-3                            5.2e-4               6.3e-4             0.07 %
    (* the 11 fixtures the reference runs to convergence; on the two it caps at 100 iterations any cap but 100
    moves the plan by 0.2-7x its maximum)

`fixed_iters` removes every host sync (and makes the call capturable by torch.compile / CUDA graphs); a looser
`thresh` saves iterations. With trained weights more iterations are needed (up to the cap), so these numbers are
lower bounds there. On the demo's trained OTSeg+ models (`bench/demo_fast_modes.py`, table in the README) no hIoU
moved by more than 0.04 points down to `fixed_iters=10`; at 5 the fully supervised one lost 0.3.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "SinkhornInfo",
    "active_sinkhorn_overrides",
    "record_sinkhorn_calls",
    "sinkhorn",
    "sinkhorn_overrides",
    "sinkhorn_potentials",
]

_LOG_OFFSET = 1e-8  # the reference adds this to the marginals inside log(); it shifts potentials slightly
_ABSORB_LOG = 15.0  # re-absorb the scalings into the potentials once |log a| or |log b| exceeds this
# The scaling update looks at its scalings (overflow, re-absorption) after a chunk that ends at least this many
# iterations after its last look, and after the last chunk. Checking after every one-iteration chunk (the CPU's)
# cost a third of an iteration at VOC inference shapes. The e^15 -> e^88 margin leaves room for 8 iterations of
# growth, and should it not, the non-finite value is caught at the next look and the call redone in the log domain.
_STATS_EVERY = 8
_ADAPTIVE_FIRST, _ADAPTIVE_MAX = 4, 16  # chunk lengths of check_every="adaptive"

Update = Literal["scaling", "log", "reference"]
Backward = Literal["implicit", "unrolled"]
CheckEvery = int | Literal["auto", "adaptive"]


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


# Per-context state (contextvars, not module globals): a recorder or an override opened in one thread or task
# (e.g. one request of the web server) is not seen by calls made in another.
_RECORDERS: contextvars.ContextVar[tuple[list[SinkhornInfo], ...]] = contextvars.ContextVar(
    "otseg_sinkhorn_recorders", default=()
)
_OVERRIDES: contextvars.ContextVar[tuple[dict[str, Any], ...]] = contextvars.ContextVar(
    "otseg_sinkhorn_overrides", default=()
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


@contextlib.contextmanager
def sinkhorn_overrides(**settings: Any) -> Iterator[None]:
    """Override the settings of every `sinkhorn` call inside the block, whatever its caller passed.

    Accepted keys: `max_iter`, `thresh`, `check_every`, `fixed_iters`, `update`, `backward`. This is how a faster
    mode is applied to a whole model without changing its config. The overrides belong to the current thread
    or task (a `contextvars` context), so concurrent requests do not see each other's. Code compiled with
    `torch.compile` (or exported) keeps the overrides in force when it was traced. E.g.

        >>> with sinkhorn_overrides(fixed_iters=20):      # no check in the loop, 20 iterations per call
        ...     scores = model.predict_scores(images)
    """
    allowed = {"max_iter", "thresh", "check_every", "fixed_iters", "update", "backward"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise TypeError(f"unknown sinkhorn setting(s) {unknown}; valid: {sorted(allowed)}")
    token = _OVERRIDES.set((*_OVERRIDES.get(), dict(settings)))
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def active_sinkhorn_overrides() -> dict[str, Any]:
    """The `sinkhorn_overrides` in force in this context, merged (innermost wins); {} outside any block."""
    merged: dict[str, Any] = {}
    for override in _OVERRIDES.get():
        merged.update(override)
    return merged


# ------------------------------------------------------------------------------------------------ problem set-up
@dataclass
class _Problem:
    cost: Tensor  # (P, M, N) in the compute dtype
    eps: float
    log_mu: Tensor  # (P, M) log(mu + 1e-8)
    log_nu: Tensor  # (P, N)
    mu: Tensor | None  # the marginals as given (for diagnostics), None = uniform
    nu: Tensor | None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prepare(cost: Tensor, eps: float, mu: Tensor | None, nu: Tensor | None) -> _Problem:
    if cost.dim() != 3:
        raise ValueError(f"sinkhorn expects a cost of shape (P, M, N), got {tuple(cost.shape)}")
    if not eps > 0:
        raise ValueError(f"sinkhorn needs eps > 0, got {eps}")
    p, m, n = cost.shape
    dtype = _compute_dtype(cost.dtype)
    cost = cost.to(dtype)
    if mu is None:
        # The reference computes log(1/M + 1e-8) in float32 on the device; do exactly that.
        log_mu = torch.log(torch.full((p, m), 1.0 / m, dtype=dtype, device=cost.device) + _LOG_OFFSET)
    else:
        if mu.shape != (p, m):
            raise ValueError(f"mu must have shape {(p, m)}, got {tuple(mu.shape)}")
        mu = mu.to(dtype)
        log_mu = torch.log(mu + _LOG_OFFSET)
    if nu is None:
        log_nu = torch.log(torch.full((p, n), 1.0 / n, dtype=dtype, device=cost.device) + _LOG_OFFSET)
    else:
        if nu.shape != (p, n):
            raise ValueError(f"nu must have shape {(p, n)}, got {tuple(nu.shape)}")
        nu = nu.to(dtype)
        log_nu = torch.log(nu + _LOG_OFFSET)
    return _Problem(cost, float(eps), log_mu, log_nu, mu, nu)


# ------------------------------------------------------------------------------------------------ update rules
def _mean_abs_change(new: Tensor, old: Tensor, scale: float) -> Tensor:
    """scale * mean |new - old|: the stopping statistic in eps-scaled potentials. A sum scaled once costs half of
    `.abs().mean() * scale` at (20, 1024) (mean adds a division, and the product another pass); the two differ by
    float rounding only."""
    return (new - old).abs_().sum() * (scale / new.numel())


class _ReferenceRule:
    """The literal reference update (bit-identical to it). State: (u, v). Differentiable (no in-place ops)."""

    name = "reference"

    def __init__(self, prob: _Problem) -> None:
        self.prob = prob
        self.neg_cost = -prob.cost

    def initial(self) -> tuple[Tensor, ...]:
        return torch.zeros_like(self.prob.log_mu), torch.zeros_like(self.prob.log_nu)

    def step(self, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor]:
        u, v = state
        eps = self.prob.eps
        logits = (self.neg_cost + u[:, :, None] + v[:, None, :]) / eps
        u_new = eps * (self.prob.log_mu - torch.logsumexp(logits, dim=2)) + u
        logits = (self.neg_cost + u_new[:, :, None] + v[:, None, :]) / eps
        v_new = eps * (self.prob.log_nu - torch.logsumexp(logits, dim=1)) + v
        return (u_new, v_new), (u_new - u).abs().mean()

    def chunk_stats(self, state: tuple[Tensor, ...], force: bool = False) -> list[Tensor]:
        return []

    def after_chunk(self, state: tuple[Tensor, ...], stats: list[float], more: bool) -> tuple[Tensor, ...]:
        return state

    def potentials(self, state: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        return state[0], state[1]

    def plan(self, state: tuple[Tensor, ...]) -> Tensor:
        u, v = state
        return torch.exp((self.neg_cost + u[:, :, None] + v[:, None, :]) / self.prob.eps)


class _LogRule:
    """Plain log-domain update in eps-scaled potentials f = u/eps, g = v/eps. State: (f, g). Differentiable."""

    name = "log"

    def __init__(self, prob: _Problem) -> None:
        self.prob = prob
        self.logits = prob.cost / -prob.eps  # A = -C/eps, built once

    def initial(self) -> tuple[Tensor, ...]:
        return torch.zeros_like(self.prob.log_mu), torch.zeros_like(self.prob.log_nu)

    def step(self, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor]:
        f, g = state
        f_new = self.prob.log_mu - torch.logsumexp(self.logits + g[:, None, :], dim=2)
        g_new = self.prob.log_nu - torch.logsumexp(self.logits + f_new[:, :, None], dim=1)
        return (f_new, g_new), _mean_abs_change(f_new, f, self.prob.eps)

    def chunk_stats(self, state: tuple[Tensor, ...], force: bool = False) -> list[Tensor]:
        return []

    def after_chunk(self, state: tuple[Tensor, ...], stats: list[float], more: bool) -> tuple[Tensor, ...]:
        return state

    def potentials(self, state: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        return state[0] * self.prob.eps, state[1] * self.prob.eps

    def plan(self, state: tuple[Tensor, ...]) -> Tensor:
        f, g = state
        return torch.exp(self.logits + f[:, :, None] + g[:, None, :])


class _NonFinite(RuntimeError):
    """The scaling update met inf/nan (e.g. eps far below the cost range): redo the call in the log domain."""


class _ScalingRule:
    """Log-domain Sinkhorn with absorbed scalings; see the module docstring. Uses in-place ops: no autograd.

    Frame: scaled potentials f = f0 + log a, g = g0 + log b, and a kernel K = exp(A + f0 + g0) (A = -C/eps),
    stored transposed, (P, N, M), contiguous along M: both mat-vecs then run along contiguous rows (K b as
    b^T K^T, K^T a as K^T a), 1.2-4x faster on CPU than reading a (P, M, N) copy along its columns, and one layout
    halves the memory. State: (log a (P, 1, M), b (P, 1, N)): row vectors, the shape `bmm` takes and returns, so
    an iteration makes no copies (at 100 iterations of small problems every op counts).
    """

    name = "scaling"

    def __init__(self, prob: _Problem) -> None:
        self.prob = prob
        self.kernel_t: Tensor | None = None  # K^T (P, N, M)
        self.f0: Tensor | None = None  # (P, M)
        self.g0: Tensor | None = None  # (P, N)
        self.mu = prob.log_mu.exp()[:, None, :]  # mu + 1e-8, (P, 1, M)
        self.nu = prob.log_nu.exp()[:, None, :]
        self.frame_unchecked = False  # the first chunk after the frame is built also checks g0
        self.unchecked_iters = 0  # iterations since the scalings were last checked

    def initial(self) -> tuple[Tensor, ...]:
        return ()  # the first step builds the frame

    def _first_step(self) -> tuple[tuple[Tensor, ...], Tensor]:
        """The reference's first iteration (u = v = 0), with max-stabilised sums; the frame becomes its plan."""
        prob = self.prob
        p, m, n = prob.cost.shape
        logits_t = torch.empty((p, n, m), dtype=prob.cost.dtype, device=prob.cost.device)
        torch.div(prob.cost.transpose(1, 2), -prob.eps, out=logits_t)  # A^T (P, N, M), contiguous along M
        row_max = logits_t.amax(dim=1)  # (P, M)
        ones_n = torch.ones(p, 1, n, dtype=logits_t.dtype, device=logits_t.device)
        row_sum = torch.bmm(ones_n, (logits_t - row_max[:, None, :]).exp_()).squeeze(1)  # (P, M)
        f1 = prob.log_mu - row_max - torch.log(row_sum)  # = log mu - LSE_n(A)
        work = logits_t.add_(f1[:, None, :])  # A + f1, in place of A^T
        col_max = work.amax(dim=2)  # (P, N)
        work = work.sub_(col_max[:, :, None]).exp_()
        col_sum = work.sum(dim=2)  # (P, N)
        g1 = prob.log_nu - col_max - torch.log(col_sum)  # = log nu - LSE_m(A + f1)
        self.kernel_t = work.mul_((self.nu[:, 0] / col_sum)[:, :, None])  # exp(A + f1 + g1) = plan of iteration 1
        self.f0, self.g0 = f1, g1
        self.frame_unchecked = True
        state = (torch.zeros_like(f1)[:, None, :], torch.ones_like(g1)[:, None, :])
        return state, f1.abs().mean() * prob.eps

    def step(self, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor]:
        if not state:
            return self._first_step()
        log_a, b = state
        assert self.kernel_t is not None  # set by the first step (the state is empty until then)
        self.unchecked_iters += 1
        a_new = self.mu / torch.bmm(b, self.kernel_t)  # mu / (K b)  (P, 1, M)
        log_a_new = torch.log(a_new)
        b_new = self.nu / torch.bmm(self.kernel_t, a_new.transpose(1, 2)).transpose(1, 2)  # nu / (K^T a)  (P, 1, N)
        # u - u_prev = eps * (log a_new - log a): the frame f0 cancels.
        return (log_a_new, b_new), _mean_abs_change(log_a_new, log_a, self.prob.eps)

    def chunk_stats(self, state: tuple[Tensor, ...], force: bool = False) -> list[Tensor]:
        """Scalars for `after_chunk`: (min, max) of log a and of b, and of g0 after a new frame; none when the
        last look is recent (`_STATS_EVERY`) and `force` is False."""
        if not state or not (force or self.frame_unchecked or self.unchecked_iters >= _STATS_EVERY):
            return []
        self.unchecked_iters = 0
        log_a, b = state
        values = [*torch.aminmax(log_a), *torch.aminmax(b)]
        if self.frame_unchecked:
            assert self.g0 is not None
            values += [*torch.aminmax(self.g0)]
        return values

    def after_chunk(self, state: tuple[Tensor, ...], stats: list[float], more: bool) -> tuple[Tensor, ...]:
        """Raise `_NonFinite` on inf/nan; re-absorb large scalings when more iterations follow."""
        if not state or not stats:
            return state
        if not all(math.isfinite(x) for x in stats) or stats[2] <= 0.0:  # b underflowed to 0: log b = -inf
            raise _NonFinite
        self.frame_unchecked = False
        a_min, a_max, b_min, b_max = stats[:4]
        if more and max(-a_min, a_max, -math.log(b_min), math.log(b_max)) > _ABSORB_LOG:
            state = self.absorb(state)
        return state

    def absorb(self, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Move the scalings into the potentials and the kernel (a, b -> 1)."""
        log_a, b = state
        assert self.kernel_t is not None and self.f0 is not None and self.g0 is not None
        self.kernel_t = self.kernel_t.mul_(b.transpose(1, 2)).mul_(log_a.exp())
        self.f0 = self.f0 + log_a[:, 0]
        self.g0 = self.g0 + b[:, 0].log()
        return torch.zeros_like(log_a), torch.ones_like(b)

    def potentials(self, state: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        eps = self.prob.eps
        if not state:
            return torch.zeros_like(self.prob.log_mu), torch.zeros_like(self.prob.log_nu)
        log_a, b = state
        assert self.f0 is not None and self.g0 is not None
        return (self.f0 + log_a[:, 0]) * eps, (self.g0 + b[:, 0].log()) * eps

    def plan(self, state: tuple[Tensor, ...]) -> Tensor:
        """The plan K * a_m * b_n, built in place of the kernel (call once, at the end)."""
        if not state:
            return torch.exp(self.prob.cost / -self.prob.eps)
        log_a, b = state
        assert self.kernel_t is not None
        plan_t, self.kernel_t = self.kernel_t, None
        return plan_t.mul_(b.transpose(1, 2)).mul_(log_a.exp()).transpose(1, 2).contiguous()


_RULES: dict[str, Callable[[_Problem], Any]] = {"scaling": _ScalingRule, "log": _LogRule, "reference": _ReferenceRule}


# ------------------------------------------------------------------------------------------------ the loop
@dataclass
class _Run:
    state: tuple[Tensor, ...]
    iterations: int
    err: float | Tensor  # a Tensor only with fixed_iters (no sync was made)
    syncs: int


def _next_chunk(check_every: CheckEvery, done: int, errs: list[float], thresh: float) -> int:
    if isinstance(check_every, int):
        return check_every
    # "adaptive": predict the crossing from the linear convergence rate of the last two statistics.
    if len(errs) >= 2 and 0.0 < errs[-1] < errs[-2] and thresh > 0:
        rate = errs[-1] / errs[-2]
        remaining = math.log(thresh / errs[-1]) / math.log(rate)
        return int(min(max(math.ceil(remaining), 1), _ADAPTIVE_MAX))
    return _ADAPTIVE_FIRST


def _iterate(rule: Any, max_iter: int, thresh: float, check_every: CheckEvery, fixed_iters: int | None) -> _Run:
    """Run the reference stopping rule with one host sync per chunk (or none with `fixed_iters`)."""
    state = rule.initial()
    if fixed_iters is not None:
        err: Tensor | float = float("nan")
        for _ in range(fixed_iters):
            state, err = rule.step(state)
        return _Run(state, fixed_iters, err, 0)
    done, syncs, last_err = 0, 0, float("nan")
    errs_seen: list[float] = []
    while done < max_iter:
        k = min(_next_chunk(check_every, done, errs_seen, thresh), max_iter - done)
        history, errs = [], []
        for _ in range(k):
            state, err = rule.step(state)
            history.append(state)
            errs.append(err)
        stats = rule.chunk_stats(state, force=done + k >= max_iter)
        host = torch.stack(errs + stats).tolist()  # the only host synchronisation of this chunk
        syncs += 1
        chunk_errs, stats_host = host[:k], host[k:]
        for j, e in enumerate(chunk_errs):
            if e < thresh:  # the reference's `err.item() < thresh`, at the first iteration where it holds
                return _Run(history[j], done + j + 1, e, syncs)
        done += k
        last_err = chunk_errs[-1]
        errs_seen.extend(chunk_errs)
        state = rule.after_chunk(state, stats_host, done < max_iter)
    return _Run(state, done, last_err, syncs)


def _solve(
    prob: _Problem,
    update: str,
    max_iter: int,
    thresh: float,
    check_every: CheckEvery,
    fixed_iters: int | None,
) -> tuple[Any, _Run, bool]:
    """Run the loop with the given update; a scaling run that meets inf/nan is redone in the log domain."""
    if update not in _RULES:
        raise ValueError(f"unknown sinkhorn update {update!r}; use 'scaling', 'log' or 'reference'")
    rule = _RULES[update](prob)
    try:
        run = _iterate(rule, max_iter, thresh, check_every, fixed_iters)
        if update == "scaling" and fixed_iters is not None and run.state and not _is_compiling():
            # No check ran inside the loop: one look after it guards against overflow (skipped under compile).
            rule.after_chunk(run.state, torch.stack(rule.chunk_stats(run.state, force=True)).tolist(), False)
            run.syncs += 1
        return rule, run, False
    except _NonFinite:
        rule = _LogRule(prob)
        return rule, _iterate(rule, max_iter, thresh, check_every, fixed_iters), True


def _is_compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - old torch
        return False


def _resolve_check_every(check_every: CheckEvery, device: torch.device) -> CheckEvery:
    if check_every == "auto":
        return 1 if device.type == "cpu" else "adaptive"
    if check_every == "adaptive":
        return check_every
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be a positive int, 'auto' or 'adaptive', got {check_every!r}")
    return check_every


@torch.compiler.assume_constant_result
def _override_items() -> tuple[tuple[str, Any], ...]:
    """The `sinkhorn_overrides` in force, merged, as plain items. torch.compile / torch.export cannot trace
    `ContextVar.get`; marked as a constant result, this runs eagerly when a graph is traced and the overrides
    of that moment are baked into the graph (as the ONNX export needs)."""
    merged: dict[str, Any] = {}
    for override in _OVERRIDES.get():
        merged.update(override)
    return tuple(merged.items())


def _apply_overrides(settings: dict[str, Any]) -> dict[str, Any]:
    settings.update(dict(_override_items()))
    return settings


def _default_update(unrolled: bool) -> Update:
    """The update rule when none is asked for, the same for `sinkhorn` and `sinkhorn_potentials`: the scaling
    update, or the literal reference loop where gradients flow through the iterations (unrolled)."""
    return "reference" if unrolled else "scaling"


# ------------------------------------------------------------------------------------------------ implicit backward
def _implicit_backward(plan: Tensor, grad_plan: Tensor, eps: float) -> Tensor:
    """dL/dC for the entropic plan T = exp((u_m + v_n - C_mn)/eps) with its marginals held fixed.

    Derivation (per problem; f = u/eps, g = v/eps, a = T 1, b = T^T 1 the plan's actual marginals):
    dT_mn = T_mn (df_m + dg_n - dC_mn/eps). Holding a and b fixed gives the linear system
    H [df; dg] = [T dC 1; dC^T T 1]/eps (row-wise and column-wise sums of T o dC) with
    H = [[diag(a), T], [T^T, diag(b)]], singular along (1, -1) only (the shared constant of u and v).
    With G = dL/dT, r = (G o T) 1 and c = (G o T)^T 1, dL = [r; c] . [df; dg] - <G o T, dC>/eps, so with the
    adjoint H [x; y] = [r; c]:  dL/dC = T o (x 1^T + 1 y^T - G)/eps.
    Eliminating x = (r - T y)/a (diag(a) is diagonal) leaves the N x N Schur complement
    S = diag(b) - T^T diag(1/a) T, which is the graph Laplacian of W = T^T diag(1/a) T (its diagonal is minus its
    off-diagonal row sums exactly when a = T 1, so it is built that way, free of cancellation):
        S y = sum_m T_mn (G_mn - Gbar_m),  Gbar_m = sum_n T_mn G_mn / a_m,
        x_m = Gbar_m - ybar_m,              ybar_m = sum_n T_mn y_n / a_m,
        dL/dC_mn = T_mn (Gbar_m - G_mn + y_n - ybar_m) / eps.
    S y = rhs is solved as (S + gamma 1 1^T) y = rhs (rhs sums to 0; the gauge of y cancels in y_n - ybar_m), in
    float64: P systems of size N.

    T is the exact entropic-OT plan for the marginals (a, b) it has; the reference stops with exact column sums
    and approximate row sums (a ~ mu), so this is the exact gradient of the *converged* plan, and it differs from
    backpropagating through the truncated iterations by about the distance to convergence.
    """
    t = plan
    g = grad_plan.to(t.dtype)
    n = t.shape[2]
    a = t.sum(dim=2).clamp_min(torch.finfo(t.dtype).tiny)  # (P, M) actual row sums
    gt = g * t
    g_bar = gt.sum(dim=2) / a  # (P, M)
    rhs = gt.sum(dim=1) - torch.bmm(g_bar[:, None, :], t).squeeze(1)  # (P, N)
    w = torch.bmm(t.transpose(1, 2), t / a[:, :, None]).double()  # (P, N, N)
    eye = torch.eye(n, dtype=torch.bool, device=t.device)
    off = w.masked_fill(eye, 0.0)
    lap = torch.diag_embed(off.sum(dim=2)) - off
    trace = lap.diagonal(dim1=1, dim2=2).sum(dim=1)  # (P,)
    gamma = torch.where(trace > 0, trace / (n * n), torch.ones_like(trace))
    y = torch.linalg.solve(lap + gamma[:, None, None], rhs.double()).to(t.dtype)  # (P, N)
    y_bar = torch.bmm(t, y[:, :, None]).squeeze(2) / a
    # T o (Gbar_m - ybar_m + y_n) - T o G, scaled by 1/eps
    out = (g_bar - y_bar)[:, :, None] + y[:, None, :]
    return out.mul_(t).sub_(gt).div_(eps)


class _ImplicitSinkhorn(torch.autograd.Function):
    """plan = sinkhorn(cost) with an implicit-function backward that saves only the plan."""

    @staticmethod
    def forward(ctx: Any, cost: Tensor, solve: Callable[[], Tensor], eps: float) -> Tensor:  # type: ignore[override]
        plan = solve()
        ctx.eps = eps
        ctx.save_for_backward(plan)
        return plan

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_plan: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        (plan,) = ctx.saved_tensors
        grad = _implicit_backward(plan, grad_plan, ctx.eps)
        return grad, None, None


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
    prob = _prepare(cost, eps, mu, nu)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (cost, mu, nu))
    if update is None:  # `sinkhorn`'s rule: gradients through the iterations need the literal loop
        update = _default_update(unrolled=needs_grad)
    if update == "scaling" and needs_grad:
        raise ValueError("update='scaling' is not differentiable through its iterations; use 'reference' or 'log'")
    check = _resolve_check_every(check_every, cost.device)
    with torch.autocast(device_type=cost.device.type, enabled=False):
        rule, run, _ = _solve(prob, update, max_iter, thresh, check, fixed_iters)
        u, v = rule.potentials(run.state)
    err = run.err.item() if isinstance(run.err, Tensor) else run.err
    return u, v, run.iterations, err


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
            depend on it.
        fixed_iters: run exactly this many iterations and never check (ignores max_iter/thresh): no host sync in
            the loop (the scaling update checks once after it for inf/nan, not under compile), traceable by
            torch.compile (fullgraph). A faster mode that changes results: see the module docstring.

    Returns:
        plan T: (P, M, N) float32 (float64 for float64 costs). Column sums equal nu (+1e-8) to float precision;
        row sums approximately mu.
    """
    settings = _apply_overrides(
        {
            "max_iter": max_iter,
            "thresh": thresh,
            "update": update,
            "backward": backward,
            "check_every": check_every,
            "fixed_iters": fixed_iters,
        }
    )
    max_iter, thresh, fixed_iters = settings["max_iter"], settings["thresh"], settings["fixed_iters"]
    backward = settings["backward"]
    if backward not in ("implicit", "unrolled"):
        raise ValueError(f"unknown sinkhorn backward {backward!r}; use 'implicit' or 'unrolled'")
    prob = _prepare(cost, eps, mu, nu)
    check = _resolve_check_every(settings["check_every"], cost.device)
    grad_cost = torch.is_grad_enabled() and cost.requires_grad
    grad_marginals = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (mu, nu))
    if grad_marginals:
        backward = "unrolled"
    update = settings["update"] or _default_update(unrolled=backward == "unrolled")
    if backward == "unrolled" and update == "scaling" and (grad_cost or grad_marginals):
        raise ValueError("backward='unrolled' needs update='reference' or 'log' (the scaling update is in place)")

    result: dict[str, Any] = {}

    def solve() -> Tensor:
        rule, run, fell_back = _solve(prob, update, max_iter, thresh, check, fixed_iters)
        result.update(run=run, rule=rule, fallback=fell_back)
        return rule.plan(run.state)

    with torch.autocast(device_type=cost.device.type, enabled=False):
        if grad_cost and backward == "implicit" and not grad_marginals:
            plan = _ImplicitSinkhorn.apply(prob.cost, solve, prob.eps)
            used_backward: str | None = "implicit"
        elif grad_cost or grad_marginals:
            plan = solve()
            used_backward = "unrolled"
        else:
            with torch.no_grad():
                plan = solve()
            used_backward = None
    recorders = () if _is_compiling() else _RECORDERS.get()  # (nor can a compiled region record its calls)
    if recorders:
        _record(prob, plan, result, used_backward, recorders)
    return plan


def _record(
    prob: _Problem,
    plan: Tensor,
    result: dict[str, Any],
    used_backward: str | None,
    recorders: tuple[list[SinkhornInfo], ...],
) -> None:
    run: _Run = result["run"]
    with torch.no_grad():
        p, m, _ = plan.shape
        row_target = prob.mu if prob.mu is not None else plan.new_full((p, m), 1.0 / m)
        row_err = (plan.sum(dim=2) - row_target).abs().sum(dim=1).amax()
        err = run.err if isinstance(run.err, Tensor) else torch.tensor(run.err)
        err_value, row_value = torch.stack([err.to(row_err), row_err]).tolist()
    cost_p, cost_m, cost_n = prob.cost.shape
    info = SinkhornInfo(
        shape=(cost_p, cost_m, cost_n),
        iterations=run.iterations,
        error=err_value,
        row_marginal_error=row_value,
        syncs=run.syncs,
        update=result["rule"].name,
        backward=used_backward,
        fallback=result["fallback"],
    )
    for rec in recorders:
        rec.append(info)
