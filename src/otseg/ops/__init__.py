"""Reusable optimal-transport ops: Sinkhorn, Multi-Prompt Sinkhorn (MPS) scores, MPS attention (MPSA).

All are plain PyTorch functions/modules, usable outside OTSeg:

    from otseg.ops import sinkhorn, mps_scores, MultiPromptSinkhornAttention
    plan = sinkhorn(cost, eps=0.05)                 # cost (P, M, N) -> plan (P, M, N)
    scores = mps_scores(pixels, prompts)            # (B, M, C), (B, K, N, C) -> (B, K, M)
    attn = MultiPromptSinkhornAttention(dim=512)    # drop-in for a cross-attention
    out, score_map = attn(queries, memory)          # (B, K, N, C), (B, M, C) -> (B, K, N, C), (B, K, M)
"""

from otseg.ops.mps import mps_scores, prompt_pixel_similarity, transport_weighted_scores
from otseg.ops.mpsa import MultiPromptSinkhornAttention, SoftmaxCrossAttention
from otseg.ops.sinkhorn import (
    SinkhornInfo,
    record_sinkhorn_calls,
    sinkhorn,
    sinkhorn_potentials,
)
from otseg.ops.sinkhorn_options import SinkhornOptions

__all__ = [
    "MultiPromptSinkhornAttention",
    "SinkhornInfo",
    "SinkhornOptions",
    "SoftmaxCrossAttention",
    "mps_scores",
    "prompt_pixel_similarity",
    "record_sinkhorn_calls",
    "sinkhorn",
    "sinkhorn_potentials",
    "transport_weighted_scores",
]
