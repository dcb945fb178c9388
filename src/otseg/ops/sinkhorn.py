"""Batched log-domain Sinkhorn for entropic optimal transport.

The default arguments reproduce the reference OTSeg routine exactly (its update order, its `+1e-8` inside the
logarithms, and its stopping rule: one scalar, the mean absolute change of the row potential over *all*
problems of the batch, compared with `thresh` after each full row+column update, at most `max_iter`
iterations). Released checkpoints were trained and evaluated with that rule, so it is what `sinkhorn` does
unless told otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SinkhornInfo", "record_sinkhorn_calls", "sinkhorn", "sinkhorn_potentials"]

_LOG_OFFSET = 1e-8  # the reference adds this to the marginals inside log(); it shifts potentials slightly


@dataclass
class SinkhornInfo:
    """Diagnostics of one Sinkhorn call.

    Attributes:
        shape: (P, M, N) of the cost.
        iterations: number of row+column updates that ran.
        error: the stopping statistic after the last iteration (mean |u - u_prev| over the batch).
        row_marginal_error: max over problems of sum_m |sum_n T - mu|.
    """

    shape: tuple[int, int, int]
    iterations: int
    error: float
    row_marginal_error: float | None = None


_recorders: list[list[SinkhornInfo]] = []


@contextlib.contextmanager
def record_sinkhorn_calls() -> Iterator[list[SinkhornInfo]]:
    """Collect a `SinkhornInfo` for every `sinkhorn` call made inside the block (diagnostics, tests).

    Example:
        >>> with record_sinkhorn_calls() as calls:
        ...     model(images)
        >>> [c.iterations for c in calls]
    """
    calls: list[SinkhornInfo] = []
    _recorders.append(calls)
    try:
        yield calls
    finally:
        _recorders.remove(calls)


def _uniform(p: int, n: int, like: Tensor) -> Tensor:
    return torch.full((p, n), 1.0 / n, dtype=like.dtype, device=like.device)


def sinkhorn_potentials(
    cost: Tensor,
    eps: float,
    mu: Tensor | None = None,
    nu: Tensor | None = None,
    max_iter: int = 100,
    thresh: float = 1e-6,
) -> tuple[Tensor, Tensor, int, float]:
    """Run the reference Sinkhorn loop and return its dual potentials.

    Args:
        cost: (P, M, N) transport costs of P independent problems.
        eps: entropic regularisation.
        mu: (P, M) row marginals; uniform 1/M if None.
        nu: (P, N) column marginals; uniform 1/N if None.
        max_iter: iteration cap.
        thresh: stop once mean |u - u_prev| over the whole batch is below this.

    Returns:
        u (P, M), v (P, N), iterations run, last stopping statistic. The plan is exp((u_m + v_n - C_mn)/eps).
    """
    if cost.dim() != 3:
        raise ValueError(f"sinkhorn expects a cost of shape (P, M, N), got {tuple(cost.shape)}")
    p, m, n = cost.shape
    mu = _uniform(p, m, cost) if mu is None else mu.to(cost.dtype)
    nu = _uniform(p, n, cost) if nu is None else nu.to(cost.dtype)
    log_mu = torch.log(mu + _LOG_OFFSET)
    log_nu = torch.log(nu + _LOG_OFFSET)
    u = torch.zeros_like(mu)
    v = torch.zeros_like(nu)
    neg_cost = -cost
    iterations, err_value = 0, float("nan")
    for _ in range(max_iter):
        u_prev = u
        # The literal reference update (u cancels mathematically; kept so the float rounding matches).
        logits = (neg_cost + u[:, :, None] + v[:, None, :]) / eps
        u = eps * (log_mu - torch.logsumexp(logits, dim=2)) + u
        logits = (neg_cost + u[:, :, None] + v[:, None, :]) / eps
        v = eps * (log_nu - torch.logsumexp(logits, dim=1)) + v
        iterations += 1
        err = (u - u_prev).abs().mean()
        err_value = err.item()  # one global scalar for the batch, as the reference
        if err_value < thresh:
            break
    return u, v, iterations, err_value


def sinkhorn(
    cost: Tensor,
    eps: float = 0.05,
    mu: Tensor | None = None,
    nu: Tensor | None = None,
    max_iter: int = 100,
    thresh: float = 1e-6,
) -> Tensor:
    """Entropic optimal-transport plan between M rows and N columns, for P problems at once.

    Solves min_T <T, C> - eps * H(T) s.t. T 1 = mu, T^T 1 = nu in the log domain. Computed in float32
    whatever the input dtype or autocast state (potentials reach |(u + v - C)/eps| ~ 40).

    Args:
        cost: (P, M, N). In OTSeg, C = 1 - cosine similarity between M pixels and N prompts, P = B*K.
        eps: entropic regularisation (the reference uses 0.05).
        mu: (P, M) row marginals, default uniform 1/M.
        nu: (P, N) column marginals, default uniform 1/N.
        max_iter, thresh: the reference stopping rule (see module docstring).

    Returns:
        plan T: (P, M, N) float32. Column sums equal nu to float precision; row sums approximately mu.
        Differentiable by unrolling the iterations.
    """
    with torch.autocast(device_type=cost.device.type, enabled=False):
        cost32 = cost.float()
        u, v, iterations, err = sinkhorn_potentials(cost32, eps, mu, nu, max_iter=max_iter, thresh=thresh)
        plan = torch.exp((-cost32 + u[:, :, None] + v[:, None, :]) / eps)
    if _recorders:
        info = SinkhornInfo(shape=tuple(cost.shape), iterations=iterations, error=err)
        for rec in _recorders:
            rec.append(info)
    return plan
