"""Multi-Prompt Sinkhorn Attention (MPSA), and the softmax cross-attention it replaces.

Both modules have the same call signature, so a decoder can switch between them:

    out, score_map = attn(queries, memory)   # or attn(queries, memory, SinkhornOptions(...))
    queries: (B, K, N, C)   N prompt queries for each of K classes
    memory:  (B, M, C)      M pixel tokens
    out:     (B, K, N, C)   updated queries
    score_map: (B, K, M)    a per-class pixel score map
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from otseg.errors import BadValueError
from otseg.ops.mps import transport_weighted_scores
from otseg.ops.sinkhorn_options import SinkhornOptions

__all__ = ["MultiPromptSinkhornAttention", "SoftmaxCrossAttention"]


class MultiPromptSinkhornAttention(nn.Module):
    """Cross-attention whose weights are the Multi-Prompt Sinkhorn transport plan instead of a softmax.

    Queries and keys are linearly projected and L2-normalised; for each (image, class) an entropic OT plan T
    (M pixels x N prompts, uniform marginals) is solved on cost 1 - cos(k_m, q_n). T itself is the attention
    weight: prompt n aggregates sum_m T[m, n] v_m, which is 1/N times a convex combination of the values.
    Single head over all channels, as the reference.

    Args:
        dim: channel width C.
        eps: Sinkhorn entropic regularisation.
        attn_dropout: dropout applied to T before aggregating values (training only).
        max_iter, thresh: Sinkhorn stopping rule (defaults = the reference's).
    """

    def __init__(
        self,
        dim: int,
        eps: float = 0.05,
        attn_dropout: float = 0.1,
        max_iter: int = 100,
        thresh: float = 1e-6,
    ) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_dropout)
        self.eps, self.max_iter, self.thresh = eps, max_iter, thresh

    def forward(
        self, queries: Tensor, memory: Tensor, sinkhorn_options: SinkhornOptions | None = None
    ) -> tuple[Tensor, Tensor]:
        """queries (B, K, N, C), memory (B, M, C) -> (out (B, K, N, C), score_map (B, K, M)).

        sinkhorn_options: the transport plan's backward, stopping groups and loop modes
            (`transport_weighted_scores`).
        """
        q = F.normalize(self.q(queries), dim=-1)
        k = F.normalize(self.k(memory), dim=-1)
        v = self.v(memory)
        sim = torch.einsum("bmc,bknc->bkmn", k, q)
        score_map, plan = transport_weighted_scores(sim, self.eps, self.max_iter, self.thresh, sinkhorn_options)
        out = torch.einsum("bkmn,bmc->bknc", self.attn_drop(plan).to(v.dtype), v)
        return self.proj(out), score_map


class SoftmaxCrossAttention(nn.Module):
    """Multi-head scaled-dot-product cross-attention (the ZegCLIP baseline's decoder attention).

    The score map is the head-averaged pre-softmax logit q.k / sqrt(d), averaged over the N prompts.

    Args:
        dim: channel width C.
        num_heads: number of heads (C must be divisible by it).
        attn_dropout: dropout on the softmax weights (training only).
    """

    def __init__(self, dim: int, num_heads: int = 8, attn_dropout: float = 0.1) -> None:
        super().__init__()
        if dim % num_heads:
            raise BadValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_dropout)

    def forward(
        self, queries: Tensor, memory: Tensor, sinkhorn_options: SinkhornOptions | None = None
    ) -> tuple[Tensor, Tensor]:
        """queries (B, K, N, C), memory (B, M, C) -> (out (B, K, N, C), score_map (B, K, M)).

        sinkhorn_options: accepted for the same call signature as MPSA; no Sinkhorn runs here.
        """
        b, k, n, c = queries.shape
        h = self.num_heads
        q = self.q(queries).reshape(b, k * n, h, c // h).transpose(1, 2)  # (B, h, KN, d)
        key = self.k(memory).reshape(b, -1, h, c // h).transpose(1, 2)  # (B, h, M, d)
        v = self.v(memory).reshape(b, -1, h, c // h).transpose(1, 2)
        logits = (q @ key.transpose(-2, -1)) * self.scale  # (B, h, KN, M)
        weights = self.attn_drop(logits.softmax(dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(b, k, n, c)
        score_map = logits.mean(dim=1).reshape(b, k, n, -1).mean(dim=2)
        return self.proj(out), score_map
