"""Dataset-level zero-shot evaluation with the reference protocol (spec section 5).

Each image is resized so its short side is the preset's `test_short_side`, scored with sliding windows
(`OTSeg.predict_scores`), the scores are resized bilinearly back to the original size, and the argmax is compared
with the original-size ground truth in one dataset-wide confusion matrix.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from otseg.distributed import DistInfo
from otseg.eval.metrics import ConfusionMatrix, compute_metrics
from otseg.model.inference_options import InferenceOptions
from otseg.model.labels import upsampled_argmax
from otseg.model.precision import Precision, check_precision
from otseg.model.segmentor import OTSeg
from otseg.utils import atomic_write

__all__ = ["evaluate", "throughput_line"]


def _write_label_png(labels: Tensor, path: Path) -> None:
    """(H, W) class indices -> a grayscale PNG (pixel value = class index), written atomically."""
    image = Image.fromarray(labels.cpu().numpy().astype(np.uint8))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


class EvalSamples(Protocol):
    """What `evaluate` reads: a sized, indexable set of samples (dicts with "image", "label", "path", ...), such as
    `otseg.data.datasets.SegmentationDataset` with a test transform."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


@torch.no_grad()
def evaluate(
    model: OTSeg,
    dataset: EvalSamples,
    *,
    dist_info: DistInfo | None = None,
    limit: int | None = None,
    progress: bool = True,
    save_predictions: str | os.PathLike | None = None,
    skip_bad: bool = False,
    precision: Precision = "float32",
    options: InferenceOptions | None = None,
) -> dict[str, Any]:
    """Score `model` on `dataset` (items: "image" (3, h, w) resized+normalised, "label" (H, W) original size).

    With several processes each rank scores every world-th image and the confusion matrices are summed.

    Args:
        limit: score only the first `limit` images (quick checks).
        save_predictions: folder for label-map PNGs (file stem = image stem), for `otseg score` or pictures.
        skip_bad: a sample that cannot be read (corrupt image, bad label) is skipped and listed under
            "skipped" in the result, instead of stopping the evaluation (what `--bad-samples skip` asks for).
        precision: "float32" (default) or "bf16" (`OTSeg.predict_scores`; `otseg.model.precision`).
        options: ensemble weight, seen bias and Sinkhorn modes of the scoring (`InferenceOptions`, passed to
            `OTSeg.predict_scores`); None: the model config's.

    Returns:
        `compute_metrics(...)` (percent) plus "num_images".
    """
    precision = check_precision(precision)
    d = dist_info or DistInfo(device=next(model.parameters()).device)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    cm = ConfusionMatrix(model.num_classes, device=d.device)
    indices = range(d.rank, n, d.world_size)
    bar = None
    if progress and d.is_main:
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
            scores = model.predict_scores(sample["image"][None].to(d.device), precision=precision, options=options)
            pred = upsampled_argmax(scores[0], tuple(label.shape[-2:]))
            cm.update(pred, label, source=str(sample.get("path", i)))
            if out_dir is not None:
                stem = Path(str(sample.get("path", f"{i:06d}"))).stem
                _write_label_png(pred, out_dir / f"{stem}.png")
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


def throughput_line(num_images: int, seconds: float, precision: Precision, dist_info: DistInfo | None = None) -> str:
    """The line `otseg eval` ends with: images scored, wall time and images per second (all processes together:
    reading, resizing, sliding windows and scoring), with the precision and device they ran at."""
    d = dist_info or DistInfo()
    rate = num_images / seconds if seconds > 0 else float("inf")
    where = f"{d.device}" + (f" x {d.world_size} processes" if d.world_size > 1 else "")
    return f"eval: {num_images} images in {seconds:.1f} s: {rate:.2f} images/s ({precision}, {where})"
