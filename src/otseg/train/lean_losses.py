"""The reference's losses and pseudo-labels computed a chunk of classes at a time from patch-grid logits.

The reference upsamples both logit maps of the head to (B, K, S, S) and compares them with a dense one-hot target
of that size (spec section 8, item 8): at the COCO-Stuff shape (K = 156, S = 512) each such tensor is 164 MB per
image, and the focal and dice terms keep about 17 of them for backward. Here the same per-element formulas
(`losses.focal_rows`, `losses.dice_rows`) run on a chunk of classes at a time: the chunk of patch-grid logits is
upsampled exactly as the head and `seg_loss_plus` would, compared with its slice of the one-hot target, and its
per-(image, class) losses and the gradient of their sum with respect to the patch-grid chunk are computed at once.
Only that (B, K, h, w) gradient is kept for backward; no full-resolution tensor outlives its chunk.

Values equal the dense formulation's (`seg_loss_plus` on the upsampled logits) exactly: the per-(image, class) rows
are the same computation, reduced in the same order. Gradients equal it to float rounding
(tests/train/test_lean_losses.py).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from otseg.errors import BadValueError
from otseg.train.losses import (
    check_label_values,
    dice_rows,
    focal_rows,
    prediction_accuracy,
    present_classes,
)

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "seg_loss_plus_lean", "unseen_argmax_lean", "upsample_logits"]

# Full-resolution elements per chunk: the number of classes per chunk is this over B*H*W (at least one class).
# 2**22 float32 elements are 16 MB; a chunk's loss and its backward hold about 20 such tensors at once.
DEFAULT_CHUNK_ELEMENTS = 1 << 22


def upsample_logits(grid: Tensor, output_size: int, label_size: tuple[int, int]) -> Tensor:
    """What the dense path computes from patch-grid logits: (B, C, h, w) -> (B, C, *label_size).

    The head upsamples to (output_size, output_size) (`OTSegHead._upsample`); `seg_loss_plus` resizes again to the
    label size when that differs (both bilinear, align_corners=False).
    """
    up = F.interpolate(grid, size=(output_size, output_size), mode="bilinear", align_corners=False)
    if tuple(up.shape[-2:]) != tuple(label_size):
        up = F.interpolate(up, size=label_size, mode="bilinear", align_corners=False)
    return up


def _class_chunks(num_classes: int, elements_per_class: int, chunk_elements: int) -> list[tuple[int, int]]:
    if chunk_elements < 1:
        raise BadValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
    step = max(1, chunk_elements // max(elements_per_class, 1))
    return [(c0, min(c0 + step, num_classes)) for c0 in range(0, num_classes, step)]


_GradientKind = Literal["none", "sum", "terms"]


def _chunked_losses(
    grid: Tensor,
    labels: Tensor,
    output_size: int,
    chunk_elements: int,
    weights: tuple[Tensor, Tensor, float, float],
    gradients: _GradientKind,
) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """The two loss terms of `seg_loss_plus_lean`, the predicted class (B, H, W) and gradients with respect to
    `grid` (each (B, K, h, w)): none, that of (focal term + dice term) ("sum"), or those of the focal term and of
    the dice term ("terms").

    weights: (num_masks, present (B, K) bool, mask_weight, dice_weight).
    """
    num_masks, present, mask_weight, dice_weight = weights
    b, k = grid.shape[:2]
    label_size = (labels.shape[-2], labels.shape[-1])
    pixels = max(output_size * output_size, label_size[0] * label_size[1])
    focal = torch.empty((b, k), dtype=torch.float32, device=grid.device)
    dice = torch.empty_like(focal)
    grads = [torch.empty_like(grid) for _ in range({"none": 0, "sum": 1, "terms": 2}[gradients])]
    best_value: Tensor | None = None
    best_class: Tensor | None = None
    for c0, c1 in _class_chunks(k, b * pixels, chunk_elements):
        low = grid[:, c0:c1].detach().requires_grad_(bool(grads))
        with torch.set_grad_enabled(bool(grads)):
            # The dense path's operations in its order: upsample in the logits' dtype, then float32.
            up = upsample_logits(low, output_size, label_size).float()
            classes = torch.arange(c0, c1, device=labels.device).view(1, -1, 1, 1)
            targets = (labels.unsqueeze(1) == classes).float()
            focal_chunk = focal_rows(up, targets)
            dice_chunk = dice_rows(up, targets)
            if grads:
                # This chunk's share of each term, as the dense expressions (`seg_loss_plus`) write the whole term:
                # backward then passes the same values through the same operations as the dense path's does.
                mask_term = focal_chunk.sum() / num_masks * mask_weight
                dice_term = (dice_chunk * present[:, c0:c1].to(dice_chunk.dtype)).sum() / num_masks * dice_weight
                if gradients == "sum":
                    (grads[0][:, c0:c1],) = torch.autograd.grad(mask_term + dice_term, low)
                else:
                    (grads[0][:, c0:c1],) = torch.autograd.grad(mask_term, low, retain_graph=True)
                    (grads[1][:, c0:c1],) = torch.autograd.grad(dice_term, low)
        focal[:, c0:c1] = focal_chunk.detach()
        dice[:, c0:c1] = dice_chunk.detach()
        # Running top-1 over classes; a later chunk wins only when strictly larger, so ties keep the first class
        # (as `max(dim=1).indices` over all classes at once).
        value, index = up.detach().max(dim=1)
        if best_value is None or best_class is None:
            best_value, best_class = value, index + c0
        else:
            better = value > best_value
            best_value = torch.where(better, value, best_value)
            best_class = torch.where(better, index + c0, best_class)
        del up, targets, focal_chunk, dice_chunk, value, index
    if best_class is None:
        raise BadValueError("logits with no classes (K = 0)")
    loss_mask = focal.sum() / num_masks * mask_weight
    loss_dice = (dice * present.to(dice.dtype)).sum() / num_masks * dice_weight
    return loss_mask, loss_dice, best_class, grads


class _LeanLoss(torch.autograd.Function):
    """grid logits (B, K, h, w) -> (focal term, dice term, predicted class (B, H, W)).

    The gradient of (focal term + dice term) is computed in forward, chunk by chunk, and kept ((B, K, h, w)).
    Backward, when both terms get the same incoming gradient g (a loss that sums them, as `total_loss`), returns
    g times it: the dense path's values, to the rounding of that one product (none for g = 1 or a power of two).
    Otherwise (the terms weighted differently) it computes the two terms' gradients again, chunk by chunk.
    num_masks is a constant (a count): it gets no gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        grid: Tensor,
        labels: Tensor,
        num_masks: Tensor,
        present: Tensor,
        output_size: int,
        mask_weight: float,
        dice_weight: float,
        chunk_elements: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        weights = (num_masks, present, mask_weight, dice_weight)
        loss_mask, loss_dice, predicted, (grad_sum,) = _chunked_losses(
            grid, labels, output_size, chunk_elements, weights, "sum"
        )
        ctx.save_for_backward(grad_sum, grid, labels, num_masks, present)
        ctx.settings = (output_size, mask_weight, dice_weight, chunk_elements)
        ctx.mark_non_differentiable(predicted)
        return loss_mask, loss_dice, predicted

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_loss_mask: Tensor, grad_loss_dice: Tensor, _grad_predicted: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        grad_sum, grid, labels, num_masks, present = ctx.saved_tensors
        output_size, mask_weight, dice_weight, chunk_elements = ctx.settings
        if bool(grad_loss_mask == grad_loss_dice):  # one host synchronisation per output and step
            grad = grad_loss_dice * grad_sum
        else:
            weights = (num_masks, present, mask_weight, dice_weight)
            _, _, _, (grad_mask, grad_dice) = _chunked_losses(
                grid, labels, output_size, chunk_elements, weights, "terms"
            )
            grad = grad_loss_mask * grad_mask + grad_loss_dice * grad_dice
        return grad, None, None, None, None, None, None, None


def seg_loss_plus_lean(
    grid_logits: Tensor,
    labels: Tensor,
    output_size: int,
    mask_weight: float = 100.0,
    dice_weight: float = 1.0,
    num_masks: Tensor | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> dict[str, Tensor]:
    """`seg_loss_plus(upsample_logits(grid_logits, output_size, label size), labels, ...)`, chunk by chunk.

    Args:
        grid_logits: (B, K, h, w) patch-grid logits (`OTSegHead.forward(..., upsample=False)`).
        labels: (B, H, W) int64, values 0..K-1 or 255.
        output_size: the head's upsampling size S (`HeadConfig.output_size`).
        num_masks: override of the normaliser; default = present (image, class) pairs, at least 1.
        chunk_elements: full-resolution elements per chunk (sets the classes per chunk; results do not depend
            on it beyond float rounding of the gradients).

    Returns:
        {"loss_mask", "loss_dice", "acc_seg"}, as `seg_loss_plus`.
    """
    num_classes = grid_logits.shape[1]
    check_label_values(labels, num_classes)
    present = present_classes(labels, num_classes)
    if num_masks is None:
        num_masks = present.sum().clamp(min=1).to(grid_logits.dtype)
    if torch.is_grad_enabled() and grid_logits.requires_grad:
        loss_mask, loss_dice, predicted = _LeanLoss.apply(
            grid_logits, labels, num_masks, present, output_size, mask_weight, dice_weight, chunk_elements
        )
    else:
        weights = (num_masks, present, mask_weight, dice_weight)
        loss_mask, loss_dice, predicted, _ = _chunked_losses(
            grid_logits.detach(), labels, output_size, chunk_elements, weights, "none"
        )
    return {"loss_mask": loss_mask, "loss_dice": loss_dice, "acc_seg": prediction_accuracy(predicted, labels)}


@torch.no_grad()
def unseen_argmax_lean(
    decoder_grid: Tensor,
    mps_grid: Tensor | None,
    unseen: list[int],
    output_size: int,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Tensor:
    """The self-training pseudo-label: argmax over the unseen classes of sigmoid(0.5 * MPS + 0.5 * decoder), with
    both paths upsampled to (output_size, output_size), a chunk of unseen classes at a time.

    Args:
        decoder_grid, mps_grid: (B, K, h, w) patch-grid logits of the two paths (mps_grid None: decoder alone).
        unseen: the unseen class indices (ascending), the only candidates.

    Returns:
        (B, S, S) int64 class indices (into the K classes).
    """
    if not unseen:
        raise BadValueError("no unseen classes to pseudo-label with")
    b = decoder_grid.shape[0]
    size = (output_size, output_size)
    candidates = torch.tensor(sorted(unseen), device=decoder_grid.device)
    best_value: Tensor | None = None
    best_class: Tensor | None = None
    for c0, c1 in _class_chunks(len(candidates), b * output_size * output_size, chunk_elements):
        chunk = candidates[c0:c1]
        # The dense path's operations in its order: both paths upsampled, then blended, then the sigmoid.
        logits = upsample_logits(decoder_grid.detach().index_select(1, chunk), output_size, size)
        if mps_grid is not None:
            logits = 0.5 * upsample_logits(mps_grid.detach().index_select(1, chunk), output_size, size) + 0.5 * logits
        value, index = torch.sigmoid(logits).max(dim=1)
        if best_value is None or best_class is None:
            best_value, best_class = value, chunk[index]
        else:
            better = value > best_value
            best_value = torch.where(better, value, best_value)
            best_class = torch.where(better, chunk[index], best_class)
        del logits, value, index
    assert best_class is not None  # unseen is not empty
    return best_class
