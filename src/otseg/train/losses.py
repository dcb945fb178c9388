"""The reference's segmentation losses (ZegCLIP `SegLossPlus`): sigmoid focal x100 + dice x1, and `acc_seg`.

Ignore pixels (255) are deliberately NOT removed from the focal and dice terms: they get an all-zero target,
i.e. they count as negatives for every class (background, padding and, when training inductively, unseen
pixels). This is what the released checkpoints were trained with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from otseg.errors import BadValueError

IGNORE_INDEX = 255

__all__ = [
    "IGNORE_INDEX",
    "check_label_values",
    "count_present_masks",
    "dice_loss",
    "dice_rows",
    "focal_rows",
    "one_hot_targets",
    "pixel_accuracy",
    "prediction_accuracy",
    "present_classes",
    "seg_loss_plus",
    "sigmoid_focal_loss",
]


def one_hot_targets(labels: Tensor, num_classes: int) -> Tensor:
    """labels (B, H, W) in 0..K-1 or 255 -> float targets (B, K, H, W); ignore pixels are all-zero."""
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)
    return (labels.unsqueeze(1) == classes).float()


def present_classes(labels: Tensor, num_classes: int) -> Tensor:
    """Which classes each image contains: labels (B, H, W) -> (B, K) bool (no (B, K, H, W) one-hot, no host sync).

    Values outside 0..K-1 (the ignore value 255) mark nothing.
    """
    flat = labels.reshape(labels.shape[0], -1)
    slot = torch.where((flat >= 0) & (flat < num_classes), flat, num_classes)  # anything else -> a spare column
    present = torch.zeros(labels.shape[0], num_classes + 1, dtype=torch.bool, device=labels.device)
    present.scatter_(1, slot, True)
    return present[:, :num_classes]


def count_present_masks(labels: Tensor, num_classes: int) -> Tensor:
    """Number of (image, class) pairs present in `labels` (B, H, W) -> 0-dim float32 tensor (no host sync)."""
    return present_classes(labels, num_classes).sum().float()


def check_label_values(labels: Tensor, num_classes: int) -> None:
    """Raise a ValueError naming the values of `labels` outside 0..num_classes-1 and the ignore value."""
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        values = sorted(set(labels[bad].unique().tolist()))
        raise BadValueError(
            f"labels contain values {values[:10]} outside 0..{num_classes - 1} (and not the ignore value 255) "
            f"for a {num_classes}-class output; check the label remapping or the class list"
        )


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, num_masks: Tensor | float, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Focal loss, mean over pixels of each (image, class) map, summed over maps, divided by num_masks.

    Args:
        logits, targets: (B, K, H, W).
        num_masks: normaliser (number of present (image, class) pairs, at least 1).
    """
    return focal_rows(logits, targets, alpha, gamma).sum() / num_masks


def focal_rows(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Per-(image, class) focal loss, the mean over the pixels of each map: (B, K, H, W) -> (B, K)."""
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    loss = alpha_t * loss
    return loss.flatten(2).mean(dim=2)


def dice_loss(logits: Tensor, targets: Tensor, present: Tensor, num_masks: Tensor | float) -> Tensor:
    """Dice loss over the present (image, class) maps only: 1 - (2 sum(p t) + 1) / (sum p + sum t + 1).

    Args:
        logits, targets: (B, K, H, W).
        present: (B, K) bool, which maps enter the loss.
    """
    loss = dice_rows(logits, targets)
    return (loss * present.to(loss.dtype)).sum() / num_masks


def dice_rows(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-(image, class) dice loss of every map, present or not: (B, K, H, W) -> (B, K)."""
    prob = torch.sigmoid(logits).flatten(2)
    t = targets.flatten(2)
    numerator = 2 * (prob * t).sum(dim=2)
    denominator = prob.sum(dim=2) + t.sum(dim=2)
    return 1 - (numerator + 1) / (denominator + 1)


def pixel_accuracy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Top-1 accuracy in percent over non-ignored pixels (mmseg's `accuracy`, with its epsilons)."""
    # max(dim).indices: the first maximal index, as argmax, but argmax over dim 1 of (B, K, H, W) is ~7x slower on CPU
    return prediction_accuracy(logits.max(dim=1).indices, labels, ignore_index)


def prediction_accuracy(predicted: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """`pixel_accuracy` from the predicted classes (B, H, W) instead of the logits."""
    valid = labels != ignore_index
    correct = (predicted == labels) & valid
    eps = torch.finfo(torch.float32).eps
    return (correct.sum().float() + eps) * (100.0 / (valid.sum().float() + eps))


def seg_loss_plus(
    logits: Tensor,
    labels: Tensor,
    mask_weight: float = 100.0,
    dice_weight: float = 1.0,
    num_masks: Tensor | None = None,
) -> dict[str, Tensor]:
    """The reference's loss on one output.

    Args:
        logits: (B, K, h, w) logits; resized bilinearly to the label size if needed.
        labels: (B, H, W) int64, values 0..K-1 or 255.
        num_masks: override of the normaliser (e.g. averaged across processes); default = present pairs, min 1.

    Returns:
        {"loss_mask": focal * mask_weight, "loss_dice": dice * dice_weight, "acc_seg": accuracy in percent}.
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    num_classes = logits.shape[1]
    check_label_values(labels, num_classes)
    targets = one_hot_targets(labels, num_classes)
    present = targets.flatten(2).amax(dim=2) > 0
    if num_masks is None:
        num_masks = present.sum().clamp(min=1).to(logits.dtype)
    logits32 = logits.float()
    return {
        "loss_mask": sigmoid_focal_loss(logits32, targets, num_masks) * mask_weight,
        "loss_dice": dice_loss(logits32, targets, present, num_masks) * dice_weight,
        "acc_seg": pixel_accuracy(logits32.detach(), labels),
    }
