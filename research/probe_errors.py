"""Where the world card's linear probe errs (`demo-notes.md`, calibration step 9): on the test split of the default
world (seed 0) and the shipped tiny CLIP, the probe of `card.linear_probe_miou` is fitted again and its object-pixel
errors are split by what they keep (the colour, the pattern, neither), by pattern confusion, and by whether the pixel
lies in an 8-px patch of one label or of several. Method-agnostic: no segmentation model is trained.

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/probe_errors.py [--checker-cell 3.5,4.5]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch

from otseg.clip.loading import load_openai_clip
from otseg.demo import card
from otseg.demo import world as world_module
from otseg.demo.tiny_clip import tiny_clip_path
from otseg.demo.world import TEXTURES, WorldConfig
from tiny_clip_probe import use_checker_cell, world_splits  # research/ is on the path when a research script runs


def probe_errors(pred: np.ndarray, labels: np.ndarray, patch: int = 8) -> dict[str, Any]:
    """Error breakdown of predictions `pred` against `labels` (both (B, H, W); 255 = background, ignored)."""
    b, h, w = labels.shape
    cells = (
        labels.reshape(b, h // patch, patch, w // patch, patch)
        .transpose(0, 1, 3, 2, 4)
        .reshape(b, h // patch, w // patch, -1)
    )
    one_label = (cells == cells[..., :1]).all(-1).repeat(patch, 1).repeat(patch, 2)
    objects = labels != 255
    right = pred == labels
    wrong = objects & ~right
    truth, guess = labels[wrong].astype(np.int64), pred[wrong].astype(np.int64)
    n = len(TEXTURES)
    same_colour, same_pattern = truth // n == guess // n, truth % n == guess % n
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (truth[same_colour] % n, guess[same_colour] % n), 1)
    return {
        "object_pixel_accuracy": round(float(right[objects].mean()), 4),
        "object_pixels_in_mixed_patches": round(float((~one_label)[objects].mean()), 4),
        "accuracy_one_label_patches": round(float(right[objects & one_label].mean()), 4),
        "accuracy_mixed_patches": round(float(right[objects & ~one_label].mean()), 4),
        "errors_same_colour_other_pattern": round(float(same_colour.mean()), 4),
        "errors_same_pattern_other_colour": round(float(same_pattern.mean()), 4),
        "pattern_confusion_true_rows_predicted_columns": {TEXTURES[i]: confusion[i].tolist() for i in range(n)},
        "accuracy_one_label_patches_by_pattern": {
            t: round(float(right[objects & one_label & (labels % n == i)].mean()), 4) for i, t in enumerate(TEXTURES)
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checker-cell", default="", help="a world variant's checkered cell range, LOW,HIGH")
    p.add_argument("--clip", default="", help="a tiny CLIP checkpoint (default: the shipped one)")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.checker_cell:
        use_checker_cell(args.checker_cell)
    clip = load_openai_clip(args.clip or tiny_clip_path(WorldConfig(), progress=False)).eval()
    splits = world_splits()
    (train_x, train_y), (val_x, val_y) = splits["train"], splits["val"]
    probe = card.fit_linear_probe(card.dense_features(clip, train_x), train_y)
    pred = card.probe_predictions(probe, card.dense_features(clip, val_x), val_y.shape[1:]).numpy()
    print(json.dumps({"checker_cell": list(world_module.CHECKER_CELL), **probe_errors(pred, val_y)}, indent=1))


if __name__ == "__main__":
    main()
