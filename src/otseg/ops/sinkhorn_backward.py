"""The implicit backward of `otseg.ops.sinkhorn`: gradients of the returned plan with respect to the cost, by
implicit differentiation of the converged plan, saving only the plan (memory independent of the iteration count).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["ImplicitSinkhorn", "implicit_backward"]


def implicit_backward(plan: Tensor, grad_plan: Tensor, eps: float) -> Tensor:
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


class ImplicitSinkhorn(torch.autograd.Function):
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
        grad = implicit_backward(plan, grad_plan, ctx.eps)
        return grad, None, None
