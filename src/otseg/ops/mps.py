"""Multi-Prompt Sinkhorn (MPS): optimal-transport reweighting of pixel-prompt similarities.

For every (image, class) pair, the M pixel embeddings and the N prompt embeddings of the class are matched by
an entropic transport plan T* (uniform marginals 1/M, 1/N; cost 1 - cosine similarity). The class score of a
pixel is sum_n M*N*T*[m, n] * sim[m, n]: prompts that a pixel matches well weigh more, and each prompt is forced
to claim its share of the pixels, so different prompts attend to different parts of the object.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from otseg.ops.sinkhorn import sinkhorn
from otseg.ops.sinkhorn_options import SinkhornOptions

__all__ = ["mps_scores", "prompt_pixel_similarity", "transport_weighted_scores"]


def prompt_pixel_similarity(pixels: Tensor, prompts: Tensor) -> Tensor:
    """Cosine similarity of every pixel with every prompt of every class.

    Args:
        pixels: (B, M, C) pixel embeddings (normalised here).
        prompts: (B, K, N, C) per-image prompt embeddings (normalised here).

    Returns:
        (B, K, M, N) cosine similarities.
    """
    pixels = F.normalize(pixels, dim=-1)
    prompts = F.normalize(prompts, dim=-1)
    return torch.einsum("bmc,bknc->bkmn", pixels, prompts)


def transport_weighted_scores(
    sim: Tensor,
    eps: float = 0.05,
    max_iter: int = 100,
    thresh: float = 1e-6,
    options: SinkhornOptions | None = None,
) -> tuple[Tensor, Tensor]:
    """Solve the per-(image, class) transport problems on cost 1 - sim and reweight the similarities.

    Args:
        sim: (B, K, M, N) cosine similarities.
        eps, max_iter, thresh: Sinkhorn settings (defaults = the reference's).
        options: the backward, how many images share one stopping test, and the loop's modes (`SinkhornOptions`;
            its `thresh` / `max_iter`, when set, replace the arguments); None: the `sinkhorn` defaults, all B*K
            problems in one call (one stopping test).

    Returns:
        scores: (B, K, M) = sum_n M*N*T*sim, in about [-N, N].
        plan: (B, K, M, N) the transport plan T (sums to 1 per problem; columns sum to 1/N).
    """
    b, k, m, n = sim.shape
    cost = 1.0 - sim.reshape(b * k, m, n)
    options = SinkhornOptions() if options is None else options
    settings = options.sinkhorn_kwargs(max_iter, thresh)
    if options.stop_group is None:
        # One call, no arithmetic on the batch size: an exported graph keeps its batch dimension dynamic.
        plan = sinkhorn(cost, eps, **settings)
    else:
        group = min(options.stop_group, b)
        # One call per group of `group` images (its group * K problems, consecutive in the flattened batch), so
        # each group stops on its own statistic, as a call on those images alone would.
        plans = [sinkhorn(cost[i * k : (i + group) * k], eps, **settings) for i in range(0, b, group)]
        plan = plans[0] if len(plans) == 1 else torch.cat(plans)
    plan = plan.reshape(b, k, m, n)
    scores = (m * n * plan * sim).sum(dim=-1)
    return scores, plan


def mps_scores(
    pixels: Tensor,
    prompts: Tensor,
    eps: float = 0.05,
    max_iter: int = 100,
    thresh: float = 1e-6,
    options: SinkhornOptions | None = None,
) -> Tensor:
    """Multi-Prompt Sinkhorn score map.

    Args:
        pixels: (B, M, C) pixel embeddings.
        prompts: (B, K, N, C) prompt embeddings per image and class (K classes, N prompts each);
            a (K, N, C) tensor is broadcast over the batch.
        eps, max_iter, thresh: Sinkhorn settings (defaults = the reference's).
        options: backward, stopping groups and loop modes (`transport_weighted_scores`).

    Returns:
        (B, K, M) class scores per pixel.
    """
    if prompts.dim() == 3:
        prompts = prompts.unsqueeze(0).expand(pixels.shape[0], -1, -1, -1)
    scores, _ = transport_weighted_scores(
        prompt_pixel_similarity(pixels, prompts), eps, max_iter=max_iter, thresh=thresh, options=options
    )
    return scores
