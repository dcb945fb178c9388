"""From a model's class scores to the label map of the image: the argmax that inference (`Predictor`) and
evaluation (`otseg.eval.evaluate`) both use, with the scores resized to the image's size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["upsampled_argmax"]

# Values (channels x H x W floats) of one upsampled chunk: a few channels at a time, never the whole (K, H, W).
_CHUNK_ELEMENTS = 4_000_000  # resampled values per interpolate call (16 MB): several channels of small images


def upsampled_argmax(scores: Tensor, size: tuple[int, int]) -> Tensor:
    """argmax over K of `scores` (K, h, w) resized bilinearly to `size` (H, W): (H, W) int64.

    For finite scores (NaN never wins here; argmax would pick it), the same labels as
    `F.interpolate(scores[None], size, mode="bilinear").argmax(1)`, bit for bit (each channel is resampled on its own,
    as the full call does; ties go to the lower index), but the channels are resampled a few at a time and merged
    one by one into a running maximum updated in place, the labels kept as int16 until the end: memory holds about
    11 bytes a pixel (one resampled channel, the maximum, a mask, the labels) instead of a full-resolution
    (K, H, W) tensor, e.g. 0.7 GB for a 64-megapixel image, then the int64 result.
    """
    k = scores.shape[0]
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores.argmax(0)
    height, width = size
    step = max(1, min(k, _CHUNK_ELEMENTS // max(1, height * width)))
    compact = torch.int16 if k <= torch.iinfo(torch.int16).max else torch.int64
    best: Tensor | None = None
    labels = torch.zeros(size, dtype=compact, device=scores.device)
    better: Tensor | None = None
    for c0 in range(0, k, step):
        chunk = F.interpolate(scores[None, c0 : c0 + step], size=size, mode="bilinear", align_corners=False)[0]
        for i, value in enumerate(chunk):
            if best is None:
                best = value.clone()  # channel 0: labels are already 0
                continue
            better = torch.gt(value, best, out=better)  # strictly: an equal later channel does not win (argmax)
            torch.where(better, value, best, out=best)
            labels.masked_fill_(better, c0 + i)
        del chunk, value  # before the next chunk is allocated: `value` is a view that keeps this one alive
    del best, better
    return labels.to(torch.int64)
