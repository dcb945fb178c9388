"""Training objective of the three settings: label remapping, transductive pseudo-labels, total loss.

- inductive: only the seen classes' text is used; a seen class id becomes its index among the seen classes,
  unseen pixels become ignore (255) — which the losses then treat as negatives (see `losses`).
- transductive (self-training): all classes' text; seen ids unchanged; each unseen pixel gets the pseudo-label
  argmax over unseen classes of sigmoid(0.5 * MPS + 0.5 * decoder), from detached training outputs.
- fully supervised: all classes, labels unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from otseg.config import LossFormulation, ModelConfig
from otseg.errors import BadValueError
from otseg.model.head import HeadOutput
from otseg.model.segmentor import OTSeg
from otseg.ops.sinkhorn_options import SinkhornOptions
from otseg.train.lean_losses import seg_loss_plus_lean, unseen_argmax_lean
from otseg.train.losses import IGNORE_INDEX, count_present_masks, seg_loss_plus

__all__ = [
    "UNSEEN_MARK",
    "compute_losses",
    "fill_pseudo_labels",
    "remap_labels",
    "total_loss",
    "training_losses",
]

UNSEEN_MARK = -1  # transient label value of unseen-class pixels between remapping and pseudo-labelling


def remap_labels(
    labels: Tensor, seen: list[int] | tuple[int, ...], unseen: list[int] | tuple[int, ...], setting: str
) -> Tensor:
    """Map dataset class ids to training targets.

    Args:
        labels: (B, H, W) or (B, 1, H, W) int64 dataset class ids, 255 = ignore.
        seen, unseen: dataset class ids of the split.
        setting: "inductive" (seen id -> index among `seen`, unseen -> 255), "transductive" (seen id kept,
            unseen -> UNSEEN_MARK, to be pseudo-labelled), or "fully" (unchanged).
    """
    if setting not in ("inductive", "transductive", "fully"):
        raise BadValueError(f"unknown setting {setting!r}; use inductive, transductive or fully")
    if setting == "fully":
        return labels.clone()
    lut_size = max([*seen, *unseen, IGNORE_INDEX]) + 1
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= lut_size):
        lo, hi = int(labels.min()), int(labels.max())
        raise BadValueError(f"label values span {lo}..{hi}, outside the class ids 0..{lut_size - 2} and 255")
    lut = torch.full((lut_size,), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
    unseen_value = IGNORE_INDEX if setting == "inductive" else UNSEEN_MARK
    for i, c in enumerate(seen):
        lut[c] = i if setting == "inductive" else c
    for c in unseen:
        lut[c] = unseen_value
    return lut[labels]


def fill_pseudo_labels(labels: Tensor, out: HeadOutput, seen: list[int] | tuple[int, ...]) -> Tensor:
    """Replace UNSEEN_MARK pixels by the most likely unseen class (the reference's self-training rule).

    Args:
        labels: (B, H, W) after `remap_labels(..., "transductive")`.
        out: training outputs over ALL classes; patch-grid outputs (`out.upsample_to` set) are upsampled a chunk
            of classes at a time (the same labels, without (B, K, H, W) maps of all classes).
        seen: seen class ids (their channels are excluded from the argmax).
    """
    if out.upsample_to is not None:
        size = (out.upsample_to, out.upsample_to)
        if size != tuple(labels.shape[-2:]):
            raise BadValueError(f"output size {size} != label size {tuple(labels.shape[-2:])}")
        seen_set = set(seen)
        unseen = [k for k in range(out.decoder_logits.shape[1]) if k not in seen_set]
        if not unseen or not bool((labels == UNSEEN_MARK).any()):
            return labels.clone()
        pseudo = unseen_argmax_lean(out.decoder_logits, out.mps_logits, unseen, out.upsample_to)
        return torch.where(labels == UNSEEN_MARK, pseudo, labels)
    with torch.no_grad():
        logits = out.decoder_logits.detach()
        if out.mps_logits is not None:
            logits = 0.5 * out.mps_logits.detach() + 0.5 * logits
        probs = torch.sigmoid(logits)
        probs[:, list(seen)] = -1.0
        pseudo = probs.max(dim=1).indices  # = argmax(dim=1) (first maximum), much faster on CPU
        if pseudo.shape[-2:] != labels.shape[-2:]:
            raise BadValueError(f"output size {tuple(pseudo.shape[-2:])} != label size {tuple(labels.shape[-2:])}")
    return torch.where(labels == UNSEEN_MARK, pseudo, labels)


def training_losses(
    out: HeadOutput,
    labels: Tensor,
    mask_weight: float = 100.0,
    dice_weight: float = 1.0,
    num_masks: Tensor | None = None,
) -> dict[str, Tensor]:
    """Loss dict over both outputs, keys `decode.*` and `score.*`; the total is the sum of the `*loss*` keys.

    Args:
        out: head outputs (K channels). Patch-grid outputs (`out.upsample_to` set) get the lean losses
            (`seg_loss_plus_lean`: the same values without (B, K, H, W) tensors), full-size ones the reference's.
        labels: (B, H, W) targets in 0..K-1 or 255 (already remapped / pseudo-labelled).
    """
    losses = {}
    outputs = {"decode": out.decoder_logits, "score": out.mps_logits}
    for prefix, logits in outputs.items():
        if logits is None:
            continue
        if out.upsample_to is None:
            terms = seg_loss_plus(logits, labels, mask_weight, dice_weight, num_masks)
        else:
            terms = seg_loss_plus_lean(logits, labels, out.upsample_to, mask_weight, dice_weight, num_masks)
        for key, value in terms.items():
            losses[f"{prefix}.{key}"] = value
    return losses


def total_loss(losses: dict[str, Tensor]) -> Tensor:
    """Sum of the entries whose key contains 'loss' (mmseg's rule)."""
    total = sum(v for k, v in losses.items() if "loss" in k)
    if not isinstance(total, Tensor):  # sum() of nothing is the int 0
        raise BadValueError(f"no loss terms (keys containing 'loss') among {sorted(losses)}")
    return total


def compute_losses(
    model: torch.nn.Module,
    images: Tensor,
    labels: Tensor,
    num_masks: Tensor | None = None,
    num_masks_reducer: Callable[[Tensor], Tensor] | None = None,
    config: ModelConfig | None = None,
    sinkhorn_options: SinkhornOptions | None = None,
    losses: LossFormulation = "lean",
) -> dict[str, Tensor]:
    """One training step's loss dict for an `OTSeg` model in its configured setting.

    Args:
        model: an `otseg.OTSeg` (or a DistributedDataParallel wrapping one).
        images: (B, 3, H, W) normalised crops.
        labels: (B, H, W) or (B, 1, H, W) dataset class ids, 255 = ignore.
        num_masks: explicit loss normaliser; default: present (image, class) pairs of this batch.
        num_masks_reducer: maps this batch's present-pair count to the normaliser (e.g. a cross-process mean).
        config: the model's `ModelConfig` (default `model.config`; pass it when `model` is a DDP wrapper).
        sinkhorn_options: passed to the model's forward (the Sinkhorn backward and stopping groups).
        losses: "lean" (the head's patch-grid logits, upsampled a chunk of classes at a time inside the losses)
            or "dense" (the reference's formulation: (B, K, H, W) logits and one-hot targets); equal values,
            gradients equal to float rounding (`TrainConfig.losses`).
    """
    if losses not in ("lean", "dense"):
        raise BadValueError(f"unknown loss formulation {losses!r}; use 'lean' or 'dense'")
    if config is None:
        if not isinstance(model, OTSeg):  # a DDP wrapper does not expose the model's attributes
            raise TypeError(f"compute_losses: pass config= for a {type(model).__name__} (only an OTSeg carries one)")
        config = model.config
    cfg = config
    if labels.dim() == 4:
        labels = labels[:, 0]
    seen, unseen = list(cfg.seen_classes), list(cfg.unseen_classes)
    targets = remap_labels(labels, seen, unseen, cfg.setting)
    options = {} if sinkhorn_options is None else {"sinkhorn_options": sinkhorn_options}
    out = model(images, upsample=losses == "dense", **options)
    if cfg.setting == "transductive":
        targets = fill_pseudo_labels(targets, out, seen)
    if num_masks is None and num_masks_reducer is not None:
        num_masks = num_masks_reducer(count_present_masks(targets, out.decoder_logits.shape[1]))
    return training_losses(out, targets, num_masks=num_masks)
