"""The demo's pictures: for a few test images (those with an unseen class first), the image, its ground truth and each
method's prediction side by side, one PNG per setting and image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otseg.demo.presets import METHODS, SETTINGS
from otseg.demo.table import METHOD_TITLES
from otseg.demo.world import CLASS_NAMES, unseen_ids
from otseg.model.inference_options import InferenceOptions
from otseg.model.segmentor import OTSeg
from otseg.viz import label_map_panel

__all__ = ["NUM_PANELS", "panel_indices", "predict_labels", "write_panels"]


NUM_PANELS = 4


def panel_indices(val_set: Any, count: int) -> list[int]:
    """The first `count` test images that contain an unseen class (the interesting ones), else the first ones."""
    unseen = set(unseen_ids())
    chosen = []
    for i in range(len(val_set)):
        label = val_set.load_label(i)
        if unseen & {int(v) for v in np.unique(label)}:
            chosen.append(i)
        if len(chosen) == count:
            return chosen
    rest = [i for i in range(len(val_set)) if i not in chosen]
    return (chosen + rest)[:count]


@torch.no_grad()
def predict_labels(
    model: OTSeg, val_set: Any, indices: Sequence[int], options: InferenceOptions | None = None
) -> list[np.ndarray]:
    """The label maps of `val_set`'s images `indices`, scored with `options` (`OTSeg.predict_scores`)."""
    out = []
    for i in indices:
        scores = model.predict_scores(val_set[i]["image"][None], options=options)
        out.append(scores.argmax(1)[0].numpy().astype(np.uint8))
    return out


def write_panels(
    out_dir: Path, val_set: Any, indices: Sequence[int], predictions: dict[tuple[str, str], list[np.ndarray]]
) -> list[Path]:
    """One PNG per (setting, test image): image | ground truth | each method's prediction, with a legend.

    Predictions are shown on the scored pixels only: background is not a class (label 255), so what a model says
    there is not measured, and drawing it would hide the objects.
    """
    scale = 4  # 64 px images are too small to read
    paths = []
    panel_dir = out_dir / "panels"
    panel_dir.mkdir(parents=True, exist_ok=True)
    for setting in SETTINGS:
        methods = [m for m in (*METHODS, "control") if (m, setting) in predictions]
        if not methods:
            continue
        for j, i in enumerate(indices):
            image = val_set.load_image(i)
            gt = val_set.load_label(i)
            maps = [gt]
            for m in methods:
                pred = predictions[(m, setting)][j].copy()
                pred[gt == 255] = 255
                maps.append(pred)
            big = np.kron(image, np.ones((scale, scale, 1), np.uint8))
            big_maps = [np.kron(m, np.ones((scale, scale), np.uint8)) for m in maps]
            titles = ["image", "ground truth", *[f"{METHOD_TITLES[m]}" for m in methods]]
            panel = label_map_panel(big, big_maps, CLASS_NAMES, titles=titles)
            path = panel_dir / f"{setting}_{Path(val_set.samples[i][0]).stem}.png"
            panel.save(path)
            paths.append(path)
    # The legend marks unseen classes: a reader needs the split to read the pictures.
    split_note = "unseen classes: " + ", ".join(CLASS_NAMES[i] for i in unseen_ids())
    (panel_dir / "README.txt").write_text(
        "image | ground truth | predictions (background pixels are not scored and left black)\n" + split_note + "\n",
        encoding="utf-8",
    )
    return paths
