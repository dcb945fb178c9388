"""The Sinkhorn update rules behind `otseg.ops.sinkhorn`: the problem set-up and three ways to iterate it.

Each rule holds one problem batch and exposes the same small interface to the iteration drivers
(`otseg.ops.sinkhorn_loop`): `initial()` state, `step(state)` -> (new state, stopping statistic), `chunk_stats` /
`after_chunk` (host-side safety checks between chunks), `potentials(state)` and `plan(state)`.

* `ReferenceRule`: the literal reference update, bit for bit (differentiable).
* `LogRule`: the plain log-domain update with -C/eps built once (differentiable; robust for any eps).
* `ScalingRule`: log-domain Sinkhorn with absorbed scalings, two batched mat-vecs per iteration (in place, no
  autograd); `run_checking_every_iteration` is its fused loop for a stop check after every iteration.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from otseg.errors import BadValueError

__all__ = ["RULES", "LogRule", "NonFinite", "Problem", "ReferenceRule", "Run", "ScalingRule", "prepare"]

LOG_OFFSET = 1e-8  # the reference adds this to the marginals inside log(); it shifts potentials slightly
ABSORB_LOG = 15.0  # re-absorb the scalings into the potentials once |log a| or |log b| exceeds this
# The scaling update looks at its scalings (overflow, re-absorption) after a chunk that ends at least this many
# iterations after its last look, and after the last chunk. Checking after every one-iteration chunk (the CPU's)
# cost a third of an iteration at VOC inference shapes. The e^15 -> e^88 margin leaves room for 8 iterations of
# growth, and should it not, the non-finite value is caught at the next look and the call redone in the log domain.
STATS_EVERY = 8


@dataclass
class Problem:
    """One batch of P entropic-OT problems, in the compute dtype."""

    cost: Tensor  # (P, M, N)
    eps: float
    log_mu: Tensor  # (P, M) log(mu + 1e-8)
    log_nu: Tensor  # (P, N)
    mu: Tensor | None  # the marginals as given (for diagnostics), None = uniform
    nu: Tensor | None


@dataclass
class Run:
    """What an iteration driver returns: the selected state, how many iterations count, the statistic there."""

    state: tuple[Tensor, ...]
    iterations: int | Tensor  # a 0-d tensor from the compiled driver (no host read)
    err: float | Tensor  # a Tensor when no sync was made (fixed_iters, compiled)
    syncs: int


class NonFinite(RuntimeError):
    """The scaling update met inf/nan (e.g. eps far below the cost range): redo the call in the log domain."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def prepare(cost: Tensor, eps: float, mu: Tensor | None, nu: Tensor | None) -> Problem:
    """Validate the inputs and build the problem: cost (P, M, N), marginals (P, M), (P, N) or None (uniform)."""
    if cost.dim() != 3:
        raise BadValueError(f"sinkhorn expects a cost of shape (P, M, N), got {tuple(cost.shape)}")
    if not eps > 0:
        raise BadValueError(f"sinkhorn needs eps > 0, got {eps}")
    p, m, n = cost.shape
    dtype = compute_dtype(cost.dtype)
    cost = cost.to(dtype)
    if mu is None:
        # The reference computes log(1/M + 1e-8) in float32 on the device; do exactly that.
        log_mu = torch.log(torch.full((p, m), 1.0 / m, dtype=dtype, device=cost.device) + LOG_OFFSET)
    else:
        if mu.shape != (p, m):
            raise BadValueError(f"mu must have shape {(p, m)}, got {tuple(mu.shape)}")
        mu = mu.to(dtype)
        log_mu = torch.log(mu + LOG_OFFSET)
    if nu is None:
        log_nu = torch.log(torch.full((p, n), 1.0 / n, dtype=dtype, device=cost.device) + LOG_OFFSET)
    else:
        if nu.shape != (p, n):
            raise BadValueError(f"nu must have shape {(p, n)}, got {tuple(nu.shape)}")
        nu = nu.to(dtype)
        log_nu = torch.log(nu + LOG_OFFSET)
    return Problem(cost, float(eps), log_mu, log_nu, mu, nu)


def _round_to(x: float, dtype: torch.dtype) -> float:
    """x rounded to a float32 value (for float32 computations; float64 keeps the double)."""
    return x if dtype == torch.float64 else struct.unpack("f", struct.pack("f", x))[0]


def mean_abs_change(new: Tensor, old: Tensor, scale: float) -> Tensor:
    """scale * mean |new - old|: the stopping statistic in eps-scaled potentials. A sum scaled once costs half of
    `.abs().mean() * scale` at (20, 1024) (mean adds a division, and the product another pass); the two differ by
    float rounding only."""
    return (new - old).abs_().sum() * (scale / new.numel())


class ReferenceRule:
    """The literal reference update (bit-identical to it). State: (u, v). Differentiable (no in-place ops)."""

    name = "reference"

    def __init__(self, prob: Problem) -> None:
        self.prob = prob
        self.neg_cost = -prob.cost

    def initial(self) -> tuple[Tensor, ...]:
        return torch.zeros_like(self.prob.log_mu), torch.zeros_like(self.prob.log_nu)

    def step(self, state: tuple[Tensor, ...], stat: bool = True) -> tuple[tuple[Tensor, ...], Tensor | None]:
        u, v = state
        eps = self.prob.eps
        logits = (self.neg_cost + u[:, :, None] + v[:, None, :]) / eps
        u_new = eps * (self.prob.log_mu - torch.logsumexp(logits, dim=2)) + u
        logits = (self.neg_cost + u_new[:, :, None] + v[:, None, :]) / eps
        v_new = eps * (self.prob.log_nu - torch.logsumexp(logits, dim=1)) + v
        return (u_new, v_new), (u_new - u).abs().mean() if stat else None

    def chunk_stats(self, state: tuple[Tensor, ...], force: bool = False) -> list[Tensor]:
        return []

    def after_chunk(self, state: tuple[Tensor, ...], stats: list[float], more: bool) -> tuple[Tensor, ...]:
        return state

    def potentials(self, state: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        return state[0], state[1]

    def plan(self, state: tuple[Tensor, ...]) -> Tensor:
        u, v = state
        return torch.exp((self.neg_cost + u[:, :, None] + v[:, None, :]) / self.prob.eps)


class LogRule:
    """Plain log-domain update in eps-scaled potentials f = u/eps, g = v/eps. State: (f, g). Differentiable."""

    name = "log"

    def __init__(self, prob: Problem) -> None:
        self.prob = prob
        self.logits = prob.cost / -prob.eps  # A = -C/eps, built once

    def initial(self) -> tuple[Tensor, ...]:
        return torch.zeros_like(self.prob.log_mu), torch.zeros_like(self.prob.log_nu)

    def step(self, state: tuple[Tensor, ...], stat: bool = True) -> tuple[tuple[Tensor, ...], Tensor | None]:
        f, g = state
        f_new = self.prob.log_mu - torch.logsumexp(self.logits + g[:, None, :], dim=2)
        g_new = self.prob.log_nu - torch.logsumexp(self.logits + f_new[:, :, None], dim=1)
        return (f_new, g_new), mean_abs_change(f_new, f, self.prob.eps) if stat else None

    def chunk_stats(self, state: tuple[Tensor, ...], force: bool = False) -> list[Tensor]:
        return []

    def after_chunk(self, state: tuple[Tensor, ...], stats: list[float], more: bool) -> tuple[Tensor, ...]:
        return state

    def potentials(self, state: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        return state[0] * self.prob.eps, state[1] * self.prob.eps

    def plan(self, state: tuple[Tensor, ...]) -> Tensor:
        f, g = state
        return torch.exp(self.logits + f[:, :, None] + g[:, None, :])


class ScalingRule:
    """Log-domain Sinkhorn with absorbed scalings (see `otseg.ops.sinkhorn`). In-place ops: no autograd.

    Frame: scaled potentials f = f0 + log a, g = g0 + log b, and a kernel K = exp(A + f0 + g0) (A = -C/eps),
    stored transposed, (P, N, M), contiguous along M: both mat-vecs then run along contiguous rows (K b as
    b^T K^T, K^T a as K^T a), 1.2-4x faster on CPU than reading a (P, M, N) copy along its columns, and one layout
    halves the memory. State: (log a (P, 1, M), b (P, 1, N)): row vectors, the shape `bmm` takes and returns, so
    an iteration makes no copies (at 100 iterations of small problems every op counts).
    """

    name = "scaling"

    def __init__(self, prob: Problem) -> None:
        self.prob = prob
        self.kernel_t: Tensor | None = None  # K^T (P, N, M)
        self.f0: Tensor | None = None  # (P, M)
        self.g0: Tensor | None = None  # (P, N)
        self.mu = prob.log_mu.exp()[:, None, :]  # mu + 1e-8, (P, 1, M)
        self.nu = prob.log_nu.exp()[:, None, :]
        self.frame_unchecked = False  # the first look after the frame is built also checks g0
        self.unchecked_iters = 0  # iterations since the scalings were last checked

    def initial(self) -> tuple[Tensor, ...]:
        return ()  # the first step builds the frame

    def first_step(self) -> tuple[tuple[Tensor, ...], Tensor]:
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

    def update(self, b: Tensor, a: Tensor, a_col: Tensor, log_a: Tensor, k_a: Tensor, k_a_row: Tensor) -> None:
        """One row + column update into the given buffers: a = mu / (K b) (P, 1, M) and log a, then K^T a into
        `k_a` (P, N, 1), and b = nu / (K^T a) in place of it: `k_a_row` (P, 1, N), the same memory, is the new b.
        `a_col` = a.transpose(1, 2), `k_a_row` = k_a.view(P, 1, N): views made once by the caller (each view is an
        op). `b` is read first, so it may be `k_a_row` itself (the in-place loop)."""
        kernel_t = self.kernel_t
        assert kernel_t is not None  # set by the first step
        torch.bmm(b, kernel_t, out=a)  # K b as a row
        torch.div(self.mu, a, out=a)
        torch.log(a, out=log_a)
        torch.bmm(kernel_t, a_col, out=k_a)
        torch.div(self.nu, k_a_row, out=k_a_row)

    def step(self, state: tuple[Tensor, ...], stat: bool = True) -> tuple[tuple[Tensor, ...], Tensor | None]:
        if not state:
            return self.first_step()
        log_a, b = state
        self.unchecked_iters += 1
        a_new, log_a_new = torch.empty_like(log_a), torch.empty_like(log_a)
        k_a = torch.empty(b.shape[0], b.shape[2], 1, dtype=b.dtype, device=b.device)
        b_new = k_a.view(b.shape)  # (P, N, 1) and (P, 1, N) share their memory layout
        self.update(b, a_new, a_new.transpose(1, 2), log_a_new, k_a, b_new)
        # u - u_prev = eps * (log a_new - log a): the frame f0 cancels.
        err = mean_abs_change(log_a_new, log_a, self.prob.eps) if stat else None
        return (log_a_new, b_new), err

    def run_checking_every_iteration(self, max_iter: int, thresh: float) -> Run:
        """The stopping rule checked after every iteration (the CPU's default), fused: preallocated buffers
        updated in place, one host read per iteration (with the safety checks every `STATS_EVERY` iterations
        folded into it), no per-iteration state kept, the statistic's scaling done on the host. Same values as
        `step` in the chunked driver, bit for bit (plans, statistics, counts)."""
        if max_iter < 1:
            return Run((), 0, float("nan"), 0)
        state, err_t = self.first_step()
        # The first iteration's statistic and the new frame's g0 are read together.
        values = torch.stack([err_t, *self._extremes(state, with_frame=True)]).tolist()
        err = values[0]
        self._check(values[1:], more=False)  # (the scalings are 0 and 1 here: nothing to absorb)
        self.frame_unchecked = False
        syncs = done = 1
        if err < thresh or max_iter == 1:
            return Run(state, 1, err, syncs)
        p, n = state[1].shape[0], state[1].shape[2]
        log_a, log_a_new = state[0].clone(), torch.empty_like(state[0])
        a = torch.empty_like(log_a)
        a_col = a.transpose(1, 2)  # (the strides bmm saw before this loop was fused: the same float rounding)
        k_a = state[1].reshape(p, n, 1).clone()
        b = k_a.view(p, 1, n)  # b = nu / (K^T a) is written in place of K^T a
        # mean_abs_change's scaling, (sum * (eps / numel)) in the compute dtype, as the host computes it: the
        # product of two float32 values is exact in a double, and rounding it to float32 is the tensor op's result.
        factor = _round_to(self.prob.eps / log_a.numel(), log_a.dtype)
        while done < max_iter:
            self.update(b, a, a_col, log_a_new, k_a, b)
            done += 1
            err_t = log_a.sub_(log_a_new).abs_().sum()  # |old - new| in place of the old log a
            log_a, log_a_new = log_a_new, log_a
            self.unchecked_iters += 1
            if self.unchecked_iters >= STATS_EVERY or done == max_iter:
                self.unchecked_iters = 0
                values = torch.stack([err_t, *self._extremes((log_a, b))]).tolist()
                err = _round_to(values[0] * factor, log_a.dtype)
                stop = err < thresh or done == max_iter
                if self._check(values[1:], more=not stop):
                    self._absorb_in_place(log_a, b)
            else:
                err = _round_to(err_t.item() * factor, log_a.dtype)
                stop = err < thresh
            syncs += 1
            if stop:
                break
        return Run((log_a, b), done, err, syncs)

    def _extremes(self, state: tuple[Tensor, ...], with_frame: bool = False) -> list[Tensor]:
        log_a, b = state
        values = [*torch.aminmax(log_a), *torch.aminmax(b)]
        if with_frame:
            assert self.g0 is not None
            values += [*torch.aminmax(self.g0)]
        return values

    def _check(self, stats: list[float], more: bool) -> bool:
        """Raise `NonFinite` on inf/nan; True when the scalings should be re-absorbed (more iterations follow)."""
        if not all(math.isfinite(x) for x in stats) or stats[2] <= 0.0:  # b underflowed to 0: log b = -inf
            raise NonFinite
        a_min, a_max, b_min, b_max = stats[:4]
        return more and max(-a_min, a_max, -math.log(b_min), math.log(b_max)) > ABSORB_LOG

    def chunk_stats(self, state: tuple[Tensor, ...], force: bool = False) -> list[Tensor]:
        """Scalars for `after_chunk`: (min, max) of log a and of b, and of g0 after a new frame; none when the
        last look is recent (`STATS_EVERY`) and `force` is False."""
        if not state or not (force or self.frame_unchecked or self.unchecked_iters >= STATS_EVERY):
            return []
        self.unchecked_iters = 0
        return self._extremes(state, with_frame=self.frame_unchecked)

    def after_chunk(self, state: tuple[Tensor, ...], stats: list[float], more: bool) -> tuple[Tensor, ...]:
        """Raise `NonFinite` on inf/nan; re-absorb large scalings when more iterations follow."""
        if not state or not stats:
            return state
        absorb = self._check(stats, more)
        self.frame_unchecked = False
        return self.absorb(state) if absorb else state

    def _absorb_frame(self, log_a: Tensor, b: Tensor) -> None:
        assert self.kernel_t is not None and self.f0 is not None and self.g0 is not None
        self.kernel_t = self.kernel_t.mul_(b.transpose(1, 2)).mul_(log_a.exp())
        self.f0 = self.f0 + log_a[:, 0]
        self.g0 = self.g0 + b[:, 0].log()

    def absorb(self, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Move the scalings into the potentials and the kernel (a, b -> 1)."""
        log_a, b = state
        self._absorb_frame(log_a, b)
        return torch.zeros_like(log_a), torch.ones_like(b)

    def _absorb_in_place(self, log_a: Tensor, b: Tensor) -> None:
        self._absorb_frame(log_a, b)
        log_a.zero_()
        b.fill_(1.0)

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


RULES: dict[str, Callable[[Problem], Any]] = {"scaling": ScalingRule, "log": LogRule, "reference": ReferenceRule}
