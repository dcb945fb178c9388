"""Score a folder of predicted label-map PNGs against a folder of ground-truth PNGs (`reference-spec.md` §5).

Both folders hold single-channel PNGs (mode L, P or 16-bit I) named `<stem>.png`, with the same stems. Pixel
values are class ids 0..K−1 in the preset's class order; 255 in the ground truth is ignored. The ground truth
must already be in that id space (`reduce_zero_label` applied for VOC / Context / ADE20K) unless
`reduce_zero_label=True` is passed, which applies the reference's mapping (0 → 255, c → c − 1, 255 kept).

Typical use (what `otseg score --preset NAME --pred DIR --gt DIR --out FILE.json` does)::

    cfg = get_preset(name)
    metrics = score_folders(pred, gt, cfg.class_names, cfg.seen_classes, cfg.unseen_classes)
    write_results(metrics, out_json, title=f"{name}: {pred}")
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from otseg.errors import BadValueError, MissingFileError
from otseg.eval.metrics import IGNORE_INDEX, ConfusionMatrix, compute_metrics, format_markdown
from otseg.image_io import open_image
from otseg.utils import atomic_write_text

__all__ = ["list_label_maps", "read_label_map", "score_folders", "write_results"]

_MAX_LISTED = 5  # file names listed in an error message
_PROGRESS_MIN_FILES = 50


def list_label_maps(folder: str | os.PathLike) -> dict[str, Path]:
    """`{stem: path}` of the `.png` files directly inside `folder` (not recursive; suffix case-insensitive)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a directory")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() == ".png" and p.is_file()}


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """(H, W) integer array of a single-channel PNG; palette (P) images give their indices, not colours.

    Raises `ValueError` naming the file when it cannot be decoded or is not a single-channel integer image.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"label map {path} does not exist")
    try:
        with open_image(path, "label map") as img:  # the pixel cap is checked before decoding
            img.load()  # decode now so a truncated file fails here, inside the try
            mode = img.mode
            arr = np.asarray(img)
    except ValueError as e:  # open_image's own messages name the file already
        raise BadValueError(str(e) if str(path) in str(e) else f"cannot read label map {path}: {e}") from None
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise BadValueError(
            f"{path} is not a single-channel integer label map (PIL mode {mode}, array {arr.dtype}{list(arr.shape)});"
            " expected mode L, P or I with class ids as pixel values"
        )
    return arr


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(f"{n}.png" for n in names[:_MAX_LISTED])
    return shown + (f", … ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def _reduce_zero_label(gt: np.ndarray, ignore_index: int) -> np.ndarray:
    """mmseg `LoadAnnotations(reduce_zero_label=True)`: 0 → ignore, c → c − 1, ignore stays ignore."""
    out = gt.astype(np.int64) - 1
    out[gt == 0] = ignore_index
    out[gt == ignore_index] = ignore_index
    return out


def score_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    class_names: Sequence[str],
    seen: Sequence[int],
    unseen: Sequence[int],
    ignore_index: int = IGNORE_INDEX,
    *,
    reduce_zero_label: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Score every `<stem>.png` in `gt_dir` against the same stem in `pred_dir`.

    Both folders must hold exactly the same stems. Errors (all name the offending file(s)):
      FileNotFoundError  a ground-truth stem has no prediction (count and the first few listed), or gt_dir
                         has no PNGs at all;
      ValueError         predictions without ground truth (count and first few), a size mismatch (both files and
                         sizes), a label outside 0..K−1 (that is not `ignore_index` in the ground truth), or an
                         unreadable / multi-channel PNG.
    progress: tqdm bar on stderr; default: on when there are many files and stderr is a terminal.

    Returns `compute_metrics(...)` plus `"num_images"`.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    gts = list_label_maps(gt_dir)
    preds = list_label_maps(pred_dir)
    if not gts:
        raise MissingFileError(f"no .png label maps in the ground-truth folder {gt_dir}")
    missing = sorted(set(gts) - set(preds))
    extra = sorted(set(preds) - set(gts))
    if missing:
        more = f"; the prediction folder also has {len(extra)} file(s) without ground truth" if extra else ""
        raise MissingFileError(
            f"{len(missing)} of {len(gts)} ground-truth label maps have no prediction in {pred_dir}: "
            f"{_listing(missing)}{more}"
        )
    if extra:
        raise BadValueError(
            f"{len(extra)} prediction(s) in {pred_dir} have no ground truth in {gt_dir}: {_listing(extra)}"
        )

    if progress is None:
        progress = len(gts) >= _PROGRESS_MIN_FILES and sys.stderr.isatty()
    cm = ConfusionMatrix(len(class_names), ignore_index=ignore_index)
    for stem in tqdm(sorted(gts), desc="scoring", unit="img", disable=not progress):
        gt_path, pred_path = gts[stem], preds[stem]
        gt = read_label_map(gt_path)
        pred = read_label_map(pred_path)
        if gt.shape != pred.shape:
            raise BadValueError(
                f"size mismatch: prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} (WxH) but ground truth "
                f"{gt_path} is {gt.shape[1]}x{gt.shape[0]}"
            )
        if reduce_zero_label:
            gt = _reduce_zero_label(gt, ignore_index)
        # from_numpy needs a dtype torch has (uint16 only recently): widen everything to int64 on the host.
        cm.update(
            torch.from_numpy(pred.astype(np.int64, copy=False)),
            torch.from_numpy(gt.astype(np.int64, copy=False)),
            source=f"{stem}.png (prediction {pred_path}, ground truth {gt_path})",
        )

    metrics = compute_metrics(cm, class_names, seen, unseen)
    metrics["num_images"] = len(gts)
    return metrics


def write_results(metrics: dict[str, Any], out_json: str | os.PathLike, title: str | None = None) -> tuple[Path, Path]:
    """Write `metrics` as strict JSON to `out_json` and a Markdown table beside it (same name, `.md`).

    Both writes are atomic. Returns (json path, markdown path).
    """
    out_json = Path(out_json)
    if out_json.suffix.lower() == ".md":
        raise BadValueError(f"{out_json}: the JSON output must not end in .md (the Markdown report goes beside it)")
    out_md = out_json.with_suffix(".md")
    # allow_nan=False: compute_metrics reports NaN as None; anything else NaN is a bug, not "NaN" in a file.
    atomic_write_text(out_json, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    atomic_write_text(out_md, format_markdown(metrics, title=title))
    return out_json, out_md
