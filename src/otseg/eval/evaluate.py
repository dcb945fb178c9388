"""Dataset-level zero-shot evaluation with the reference protocol (spec section 5).

Each image is resized so its short side is the preset's `test_short_side`, scored with sliding windows
(`OTSeg.predict_scores`), the scores are resized bilinearly back to the original size, and the argmax is compared
with the original-size ground truth in one dataset-wide confusion matrix.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from otseg.eval.metrics import ConfusionMatrix, compute_metrics
from otseg.train.distributed import DistInfo

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    *,
    dist_info: DistInfo | None = None,
    limit: int | None = None,
    progress: bool = True,
    save_predictions: str | os.PathLike | None = None,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Score `model` on `dataset` (items: "image" (3, h, w) resized+normalised, "label" (H, W) original size).

    With several processes each rank scores every world-th image and the confusion matrices are summed.

    Args:
        limit: score only the first `limit` images (quick checks).
        save_predictions: folder for label-map PNGs (file stem = image stem), for `otseg score` or pictures.
        skip_bad: a sample that cannot be read (corrupt image, bad label) is skipped and listed under
            "skipped" in the result, instead of stopping the evaluation (what `--bad-samples skip` asks for).

    Returns:
        `compute_metrics(...)` (percent) plus "num_images".
    """
    d = dist_info or DistInfo(device=next(model.parameters()).device)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    cm = ConfusionMatrix(model.num_classes, device=d.device)
    indices = range(d.rank, n, d.world_size)
    bar = None
    if progress and d.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), desc="eval", dynamic_ncols=True)
    out_dir = Path(save_predictions) if save_predictions else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    skipped: list[str] = []
    try:
        for i in indices:
            # A corrupt or inconsistent file raises here (OSError / ValueError naming it, from otseg.data).
            try:
                sample = dataset[i]
            except (OSError, ValueError) as e:
                if not skip_bad:
                    raise
                skipped.append(" ".join(str(e).split()))
                if bar is not None:
                    bar.update(1)
                continue
            label = sample["label"].to(d.device)
            scores = model.predict_scores(sample["image"][None].to(d.device))
            if scores.shape[-2:] != label.shape[-2:]:
                scores = F.interpolate(scores, size=tuple(label.shape[-2:]), mode="bilinear", align_corners=False)
            pred = scores.argmax(dim=1)[0]
            cm.update(pred, label, source=str(sample.get("path", i)))
            if out_dir is not None:
                from PIL import Image

                stem = Path(str(sample.get("path", f"{i:06d}"))).stem
                Image.fromarray(pred.cpu().numpy().astype(np.uint8)).save(out_dir / f"{stem}.png")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:  # also on an error: its message then starts on a line of its own
            bar.close()
    cm.all_reduce()
    # The split follows the model's current classes (set_classes may have replaced the preset's).
    seen_mask = model.seen_mask.cpu()
    seen = torch.nonzero(seen_mask).flatten().tolist()
    unseen = torch.nonzero(~seen_mask).flatten().tolist()
    metrics = compute_metrics(cm, list(model.class_names), seen, unseen)
    metrics["num_images"] = n - len(skipped)
    if skipped:
        metrics["skipped"] = skipped
        if d.is_main:
            print(f"eval: skipped {len(skipped)} unreadable sample(s); the first: {skipped[0]}", file=sys.stderr)
    return metrics
