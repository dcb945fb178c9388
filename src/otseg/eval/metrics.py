"""Segmentation metrics with the reference's (mmseg 0.24 `eval_metrics`) semantics (`reference-spec.md` §5).

Intersections and unions are summed over the whole dataset before any division, so the metric is a function of
one (K, K) confusion matrix. `ConfusionMatrix` accumulates it on the inputs' device; `compute_metrics` turns it
into mIoU(S), mIoU(U), hIoU, mIoU, aAcc and per-class IoU/accuracy, all in percent.

Absent classes: a class that is neither in the ground truth nor predicted anywhere has union 0, so its IoU is
0/0 = NaN and `nanmean` leaves it out of every mean (mmseg's behaviour). A class that is predicted but never in
the ground truth has IoU 0 and *does* pull the mean down. (torchmetrics' per-class `multiclass_jaccard_index`
reports an absent class as `zero_division`, 0 by default; its macro mean leaves it out like we do.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from otseg.errors import BadValueError

__all__ = ["ConfusionMatrix", "compute_metrics", "format_markdown"]

IGNORE_INDEX = 255
_MAX_LISTED = 10  # offending values named in an error message


class ConfusionMatrix:
    """Dataset-level confusion matrix: `matrix[g, p]` = number of pixels with ground truth g predicted as p.

    Counts live in one flat int64 tensor of K·K + 2 bins on the device of the inputs: bin K·K counts ignored
    pixels and bin K·K + 1 counts invalid ones (a label outside 0..K−1 that is not the ignore index). Routing
    every pixel to some bin avoids boolean indexing, and `scatter_add_` into a fixed-size tensor avoids
    `torch.bincount`'s data-dependent output size; both would otherwise force a host sync on CUDA.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str | None = None):
        if num_classes < 1:
            raise BadValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise BadValueError(f"ignore_index {ignore_index} collides with a class id (num_classes={num_classes})")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self._counts = torch.zeros(self.num_classes**2 + 2, dtype=torch.int64, device=device)

    # ---- accumulation ------------------------------------------------------------------------------------

    @torch.no_grad()
    def update(self, pred: torch.Tensor, gt: torch.Tensor, source: str | None = None, *, check: bool = True) -> None:
        """Add one prediction / ground-truth pair (any matching shape, e.g. (H, W) or (B, H, W)).

        pred: (...) integer class ids, each must be in 0..K−1.
        gt:   (...) integer class ids in 0..K−1, or `ignore_index` (skipped).
        source: a name (file name) for error messages.
        check: validate the value ranges now and raise `ValueError` naming `source` and the offending values.
            This costs one device→host copy of four scalars (a sync on CUDA). With `check=False` nothing is
            synchronised: invalid pixels are counted in a separate bin (never dropped silently, never aliased
            into the matrix) and `check_invalid()` / `compute_metrics` raise later, without the file name.
        """
        where = f" in {source}" if source else ""
        if pred.shape != gt.shape:
            raise BadValueError(f"prediction shape {tuple(pred.shape)} != ground-truth shape {tuple(gt.shape)}{where}")
        for name, t in (("prediction", pred), ("ground truth", gt)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"{name} must be an integer tensor of class ids, got {t.dtype}{where}")
        if pred.numel() == 0:
            return
        k = self.num_classes
        device = self._counts.device
        pred = pred.to(device=device, dtype=torch.int64, non_blocking=True).reshape(-1)
        gt = gt.to(device=device, dtype=torch.int64, non_blocking=True).reshape(-1)

        ignored = gt == self.ignore_index
        gt_bad = ~ignored & ((gt < 0) | (gt >= k))
        # A prediction on an ignored pixel is irrelevant to the metric but still must be a class id: a model or
        # writer emitting garbage there is a bug we want to see.
        pred_bad = (pred < 0) | (pred >= k)

        if check:
            # One fused reduction: [gt min, gt max, pred min, pred max] over the non-ignored gt / all pred pixels.
            gt_valid = torch.where(ignored, torch.zeros_like(gt), gt)
            gmin, gmax = torch.aminmax(gt_valid)
            pmin, pmax = torch.aminmax(pred)
            gmin, gmax, pmin, pmax = torch.stack([gmin, gmax, pmin, pmax]).tolist()
            problems = []
            if gmin < 0 or gmax >= k:
                problems.append(f"ground-truth value(s) {_listed(gt[gt_bad])}")
            if pmin < 0 or pmax >= k:
                problems.append(f"prediction value(s) {_listed(pred[pred_bad])}")
            if problems:
                raise BadValueError(
                    f"{' and '.join(problems)} outside the class ids 0..{k - 1}"
                    f" (ground-truth ignore index {self.ignore_index}){where}"
                )

        idx = gt * k + pred
        idx = torch.where(ignored, torch.full_like(idx, k * k), idx)
        idx = torch.where(gt_bad | pred_bad, torch.full_like(idx, k * k + 1), idx)
        self._counts.scatter_add_(0, idx, torch.ones_like(idx))

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add `other`'s counts into this one (e.g. matrices of dataset shards); returns self."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise BadValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) into a "
                f"{self.num_classes}-class one (ignore {self.ignore_index})"
            )
        self._counts += other._counts.to(self._counts.device)
        return self

    def all_reduce(self, group: Any = None) -> ConfusionMatrix:
        """Sum the counts over all ranks when torch.distributed is initialised (a no-op otherwise); returns self.

        The counts must live on a device the backend supports (CUDA for NCCL, CPU for Gloo).
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self._counts, op=dist.ReduceOp.SUM, group=group)
        return self

    def reset(self) -> None:
        self._counts.zero_()

    # ---- read-out -----------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._counts.device

    @property
    def matrix(self) -> torch.Tensor:
        """(K, K) int64 view on the accumulation device; rows = ground truth, columns = prediction."""
        k = self.num_classes
        return self._counts[: k * k].view(k, k)

    @property
    def num_ignored(self) -> int:
        """Pixels skipped because their ground truth is `ignore_index` (host sync)."""
        return int(self._counts[-2])

    @property
    def num_invalid(self) -> int:
        """Pixels with an out-of-range label seen by `update(check=False)` (host sync)."""
        return int(self._counts[-1])

    def check_invalid(self) -> None:
        """Raise `ValueError` if any update with `check=False` saw out-of-range labels."""
        n = self.num_invalid
        if n:
            raise BadValueError(
                f"{n} pixel(s) had a prediction or ground-truth label outside 0..{self.num_classes - 1} "
                f"(ignore index {self.ignore_index}); update with check=True to find the file"
            )

    def state_dict(self) -> dict[str, Any]:
        """Plain, `torch.load(weights_only=True)`-safe state; the counts are copied to the CPU."""
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "counts": self._counts.detach().cpu().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["num_classes"]) != self.num_classes or int(state["ignore_index"]) != self.ignore_index:
            raise BadValueError(
                f"state is for {state['num_classes']} classes (ignore {state['ignore_index']}), this matrix has "
                f"{self.num_classes} (ignore {self.ignore_index})"
            )
        counts = torch.as_tensor(state["counts"])
        if counts.shape != self._counts.shape:
            raise BadValueError(f"counts of shape {tuple(counts.shape)}, expected {tuple(self._counts.shape)}")
        self._counts.copy_(counts.to(torch.int64))

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, device={self.device})"
        )


def _listed(values: torch.Tensor) -> str:
    """Up to `_MAX_LISTED` distinct values of a 1-D tensor, e.g. `[21, 254]` or `[0, 1, …] (37 distinct)`."""
    uniq = torch.unique(values).tolist()
    if len(uniq) <= _MAX_LISTED:
        return str(uniq)
    return f"{str(uniq[:_MAX_LISTED])[:-1]}, …] ({len(uniq)} distinct)"


# ---- metrics ------------------------------------------------------------------------------------------------


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN when there are none (no warning, unlike `np.nanmean`)."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _json_float(x: float) -> float | None:
    """NaN → None so the dict serialises as strict JSON."""
    return None if math.isnan(x) else float(x)


def compute_metrics(
    matrix: torch.Tensor | np.ndarray | ConfusionMatrix,
    class_names: Sequence[str],
    seen: Sequence[int],
    unseen: Sequence[int],
) -> dict[str, Any]:
    """mmseg-style metrics from a dataset-level confusion matrix, all in percent, NaN reported as None.

    matrix: (K, K) counts, rows = ground truth, columns = prediction (or a `ConfusionMatrix`).
    class_names: K names, in class-id order. seen / unseen: class ids; `unseen` is empty when fully supervised.

    Returns a JSON-ready dict:
      miou_seen   nanmean of IoU over `seen` (None if `seen` is empty or all its classes are absent),
      miou_unseen same over `unseen`,
      hiou        2·S·U / (S + U), 0 when both are 0, None when either is None,
      miou        nanmean of IoU over all K classes,
      aacc        trace / total,
      per_class_iou / per_class_acc  {name: value or None}, acc = TP / (ground-truth pixels of the class),
      seen_classes / unseen_classes  the id lists (for `format_markdown`'s split column),
      num_pixels  scored (non-ignored) pixels.
    Nothing is rounded here.
    """
    if isinstance(matrix, ConfusionMatrix):
        matrix.check_invalid()
        matrix = matrix.matrix
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    # float64 is exact for counts up to 2**53, far beyond any dataset's pixel count.
    m = np.asarray(matrix, dtype=np.float64)
    k = len(class_names)
    if m.shape != (k, k):
        raise BadValueError(f"confusion matrix of shape {m.shape} does not match {k} class names")
    if len(set(class_names)) != k:
        raise BadValueError("class names must be unique (they key the per-class results)")
    for label, ids in (("seen", seen), ("unseen", unseen)):
        bad = [i for i in ids if not 0 <= int(i) < k]
        if bad:
            raise BadValueError(f"{label} class ids {bad} out of range for {k} classes")
    overlap = set(map(int, seen)) & set(map(int, unseen))
    if overlap:
        raise BadValueError(f"class ids {sorted(overlap)} are both seen and unseen")

    tp = np.diag(m)
    gt_area = m.sum(axis=1)
    pred_area = m.sum(axis=0)
    union = gt_area + pred_area - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan) * 100.0
        acc = np.where(gt_area > 0, tp / gt_area, np.nan) * 100.0
    total = m.sum()
    aacc = float(tp.sum() / total * 100.0) if total > 0 else math.nan

    seen_ids = np.asarray(list(seen), dtype=np.int64)
    unseen_ids = np.asarray(list(unseen), dtype=np.int64)
    miou_s = _nanmean(iou[seen_ids]) if seen_ids.size else math.nan
    miou_u = _nanmean(iou[unseen_ids]) if unseen_ids.size else math.nan
    if math.isnan(miou_s) or math.isnan(miou_u):
        hiou = math.nan
    elif miou_s + miou_u == 0:
        hiou = 0.0
    else:
        hiou = 2.0 * miou_s * miou_u / (miou_s + miou_u)

    return {
        "miou_seen": _json_float(miou_s),
        "miou_unseen": _json_float(miou_u),
        "hiou": _json_float(hiou),
        "miou": _json_float(_nanmean(iou)),
        "aacc": _json_float(aacc),
        "per_class_iou": {name: _json_float(v) for name, v in zip(class_names, iou.tolist())},
        "per_class_acc": {name: _json_float(v) for name, v in zip(class_names, acc.tolist())},
        "seen_classes": [int(i) for i in seen],
        "unseen_classes": [int(i) for i in unseen],
        "num_pixels": int(total),
    }


# ---- presentation -------------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def format_markdown(metrics: Mapping[str, Any], title: str | None = None) -> str:
    """A Markdown report of `compute_metrics`' output: one summary row, then per-class IoU / accuracy.

    Values are rounded to 2 decimals here (only here); absent classes and undefined means show as "—".
    """
    lines: list[str] = []
    if title:
        lines += [f"## {title}", ""]
    lines += [
        "| mIoU(S) | mIoU(U) | hIoU | mIoU | aAcc |",
        "|---:|---:|---:|---:|---:|",
        "| " + " | ".join(_fmt(metrics.get(k)) for k in ("miou_seen", "miou_unseen", "hiou", "miou", "aacc")) + " |",
    ]
    if "num_images" in metrics or "num_pixels" in metrics:
        parts = []
        if "num_images" in metrics:
            parts.append(f"{metrics['num_images']} images")
        if "num_pixels" in metrics:
            parts.append(f"{metrics['num_pixels']} scored pixels")
        lines += ["", ", ".join(parts) + "."]

    per_iou: Mapping[str, float | None] = metrics.get("per_class_iou", {})
    per_acc: Mapping[str, float | None] = metrics.get("per_class_acc", {})
    if per_iou:
        seen = set(metrics.get("seen_classes", ()))
        unseen = set(metrics.get("unseen_classes", ()))
        lines += ["", "| id | class | split | IoU | Acc |", "|---:|---|---|---:|---:|"]
        for i, name in enumerate(per_iou):
            split = "unseen" if i in unseen else "seen" if i in seen else "—"
            lines.append(f"| {i} | {_cell(name)} | {split} | {_fmt(per_iou[name])} | {_fmt(per_acc.get(name))} |")
    return "\n".join(lines) + "\n"
