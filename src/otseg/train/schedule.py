"""Learning-rate schedule and optimiser of the reference (mmcv 1.4.4 semantics).

The reference configs say base lr 2e-5 with lr_mult 10 for "backbone" and "head" and decay_mult 0 for "norm"/"ln",
but mmcv applies only the first (longest) matching key, so every trainable parameter ends up with lr 2e-4 and
weight decay 0.01 (reference spec section 4.3). That effective setting is our default.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from otseg.errors import BadValueError

__all__ = ["build_optimizer", "poly_lr"]


def poly_lr(
    step: int,
    max_iters: int,
    base_lr: float,
    min_lr: float = 1e-6,
    power: float = 0.9,
    warmup_iters: int = 1500,
    warmup_ratio: float = 1e-6,
) -> float:
    """Learning rate at iteration `step` (0-based): poly decay to `min_lr`, with linear warm-up.

    lr = (base - min) * (1 - step / max_iters) ** power + min, multiplied during the first `warmup_iters`
    iterations by warmup_ratio + (1 - warmup_ratio) * step / warmup_iters.
    """
    progress = min(step, max_iters) / max_iters
    lr = (base_lr - min_lr) * (1 - progress) ** power + min_lr
    if step < warmup_iters:
        lr *= warmup_ratio + (1 - warmup_ratio) * step / warmup_iters
    return lr


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[tuple[str, torch.nn.Parameter]],
    lr: float = 2e-4,
    weight_decay: float = 0.01,
    backbone_lr_mult: float = 1.0,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters.

    With `backbone_lr_mult` 1 (the reference's effective setting) there is one group. Otherwise `params` must be
    named (`model.named_parameters()`), and the backbone's trainable parameters (the VPT prompts, `backbone.*`)
    form a second group whose lr is `backbone_lr_mult` times the head's; each group keeps its factor in
    `group["lr_mult"]`, which the trainer applies to the scheduled lr.
    """
    items = list(params)
    named = [item if isinstance(item, tuple) else ("", item) for item in items]
    trainable = [(n, p) for n, p in named if p.requires_grad]
    if not trainable:
        raise BadValueError("the model has no trainable parameters")
    if backbone_lr_mult == 1.0:
        groups = [{"params": [p for _, p in trainable], "lr_mult": 1.0}]
    else:
        if any(not n for n, _ in trainable):
            raise BadValueError("backbone_lr_mult needs named parameters: pass model.named_parameters()")
        backbone = [p for n, p in trainable if n.startswith("backbone.")]
        rest = [p for n, p in trainable if not n.startswith("backbone.")]
        groups = [{"params": rest, "lr_mult": 1.0}, {"params": backbone, "lr_mult": backbone_lr_mult}]
        groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)
