"""The demo's results table: a row per (method, setting) with mIoU over the world's seen and unseen classes and
their harmonic mean, the table's order and layout, and the mean and spread of each cell over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from otseg.demo.presets import METHODS, SETTINGS
from otseg.demo.world import CLASS_NAMES, seen_ids, unseen_ids

__all__ = ["METHOD_TITLES", "aggregate_rows", "format_table", "results_row", "table_order"]


METHOD_TITLES = {
    "training-free": "training-free",
    "zegclip": "ZegCLIP",
    "otseg": "OTSeg",
    "otseg+": "OTSeg+",
    "control": "control",
}


def _split_miou(per_class: dict[str, float | None], ids: Sequence[int]) -> float | None:
    """Mean IoU over `ids`, leaving out classes absent from both ground truth and prediction (mmseg's rule)."""
    values = [per_class[CLASS_NAMES[i]] for i in ids]
    present = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(present)) if present else None


def results_row(method: str, setting: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """One results row. mIoU(S)/(U) always use the world's 12/4 split, also for the fully supervised models
    (which treat every class as seen), as the paper's fully supervised rows do."""
    per_class = metrics["per_class_iou"]
    s = _split_miou(per_class, seen_ids())
    u = _split_miou(per_class, unseen_ids())
    h = None if s is None or u is None else (0.0 if s + u == 0 else 2 * s * u / (s + u))

    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {
        "method": method,
        "setting": setting,
        "miou_seen": rounded(s),
        "miou_unseen": rounded(u),
        "hiou": rounded(h),
    }


def format_table(rows: Sequence[dict[str, Any]], title: str = "") -> str:
    """The results as a Markdown table, in the paper's layout (method, setting, mIoU(S), mIoU(U), hIoU)."""

    def cell(r: dict[str, Any], key: str) -> str:
        v, std = r[key], r.get(f"{key}_std")
        if v is None:
            return "-"
        return f"{v:.1f} ± {std:.1f}" if std is not None else f"{v:.1f}"

    lines = [title] if title else []
    lines += ["| method | setting | mIoU(S) | mIoU(U) | hIoU |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {METHOD_TITLES.get(r['method'], r['method'])} | {r['setting']} | {cell(r, 'miou_seen')} | "
            f"{cell(r, 'miou_unseen')} | {cell(r, 'hiou')} |"
        )
    return "\n".join(lines)


def table_order() -> list[tuple[str, str]]:
    """(method, setting) of the table's rows, in order: per setting, the methods; inductive also has the
    training-free row first and the control last."""
    order: list[tuple[str, str]] = []
    for setting in SETTINGS:
        methods = [*METHODS]
        if setting == "inductive":
            methods = ["training-free", *methods, "control"]
        order += [(m, setting) for m in methods]
    return order


_METRICS = ("miou_seen", "miou_unseen", "hiou")


def aggregate_rows(per_seed: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of each cell over seeds: rows with `miou_seen` (the mean),
    `miou_seen_std`, ... and `per_seed` (each seed's values)."""
    out = []
    for i, first in enumerate(per_seed[0]):
        row: dict[str, Any] = {"method": first["method"], "setting": first["setting"]}
        for key in _METRICS:
            values = [rows[i][key] for rows in per_seed if rows[i][key] is not None]
            row[key] = round(float(np.mean(values)), 2) if values else None
            row[f"{key}_std"] = round(float(np.std(values, ddof=1)), 2) if len(values) > 1 else None
        row["per_seed"] = [{k: rows[i][k] for k in _METRICS} for rows in per_seed]
        out.append(row)
    return out
