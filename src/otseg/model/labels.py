"""From a model's class scores to the label map of the image: the argmax that inference (`Predictor`) and
evaluation (`otseg.eval.evaluate`) both use, with the scores resized to the image's size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["upsampled_argmax"]

# Values (channels x H x W floats) of one upsampled chunk: a few channels at a time, never the whole (K, H, W).
_CHUNK_ELEMENTS = 16_000_000


def upsampled_argmax(scores: Tensor, size: tuple[int, int]) -> Tensor:
    """argmax over K of `scores` (K, h, w) resized bilinearly to `size` (H, W): (H, W) int64.

    The same labels as `F.interpolate(scores[None], size, mode="bilinear").argmax(1)`, bit for bit (each channel is
    resampled on its own, as the full call does; ties go to the lower index), but the channels are resampled a
    few at a time, so memory holds a running maximum instead of a full-resolution (K, H, W) tensor.
    """
    k = scores.shape[0]
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores.argmax(0)
    height, width = size
    step = max(1, min(k, _CHUNK_ELEMENTS // max(1, height * width)))
    best = labels = None
    for c0 in range(0, k, step):
        chunk = F.interpolate(scores[None, c0 : c0 + step], size=size, mode="bilinear", align_corners=False)[0]
        value, index = chunk.max(0)
        index = index + c0
        if best is None or labels is None:
            best, labels = value, index
        else:
            better = value > best  # strictly: an equal later channel does not win, as argmax keeps the first
            best = torch.where(better, value, best)
            labels = torch.where(better, index, labels)
    assert labels is not None
    return labels
