"""The demo's own scoring beside the regular `evaluate`: bias-free metrics in batches (the rows at seen bias 0 and
the held-out curves), the seen-only argmax, and the control's made-up class names."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from otseg.demo.world import CLASS_NAMES, seen_ids, unseen_ids
from otseg.eval.metrics import ConfusionMatrix, compute_metrics
from otseg.model.inference_options import InferenceOptions

__all__ = [
    "control_embeddings",
    "control_names",
    "holdout_seen_miou",
    "unbiased_and_seen_only_metrics",
    "unbiased_metrics",
]


def control_names(seed: int) -> list[str]:
    """The world's class names with each unseen name replaced by a made-up two-word name (seeded): words the
    tiny CLIP never read, so their embeddings carry no knowledge of the class they stand for."""
    rng = np.random.default_rng((seed, 99))
    consonants, vowels = list("bcdfghjklmnpqrstvwxz"), list("aeiou")

    def word() -> str:
        return "".join(str(rng.choice(consonants if i % 2 == 0 else vowels)) for i in range(5))

    names = list(CLASS_NAMES)
    for i in unseen_ids():
        names[i] = f"{word()} {word()}"
    return names


def control_embeddings(model: Any, seed: int) -> torch.Tensor:
    """Class embeddings for the control: the seen classes' as they are, the unseen classes' from made-up names
    (`control_names`), through the same text tower and prompt templates."""
    model.set_classes(control_names(seed))
    return model.class_embeddings.clone()


def unbiased_metrics(
    model: Any, dataset: Any, batch_size: int = 50, options: InferenceOptions | None = None
) -> dict[str, Any]:
    """`compute_metrics` of `model` on `dataset` without the seen-class bias, the world's 12/4 split.

    The images are scored in batches (the world's images are all one crop in size, so each is one window of the
    regular slide inference); a class absent from both the ground truth and the predictions is left out, as in
    `evaluate`. `options`: the other inference settings (e.g. the ensemble weight), the seen bias replaced by 0;
    None: the model config's. The model's mode is restored afterwards.
    """
    everything, _ = _unbiased_confusions(model, dataset, batch_size, seen_only_too=False, options=options)
    return _world_metrics(everything)


def unbiased_and_seen_only_metrics(
    model: Any, dataset: Any, batch_size: int = 50, options: InferenceOptions | None = None
) -> tuple[dict, dict]:
    """`unbiased_metrics`, and from the same scores the metrics with each pixel sent to the best of the 12 seen
    classes, the classes inductive training scores (a diagnostic of the held-out curve, research/)."""
    everything, seen_only = _unbiased_confusions(model, dataset, batch_size, seen_only_too=True, options=options)
    assert seen_only is not None
    return _world_metrics(everything), _world_metrics(seen_only)


def _world_metrics(cm: ConfusionMatrix) -> dict[str, Any]:
    return compute_metrics(cm, list(CLASS_NAMES), seen=list(seen_ids()), unseen=list(unseen_ids()))


@torch.no_grad()
def _unbiased_confusions(
    model: Any, dataset: Any, batch_size: int, seen_only_too: bool, options: InferenceOptions | None = None
) -> tuple[ConfusionMatrix, ConfusionMatrix | None]:
    """One bias-free pass of `model` over `dataset` (see `unbiased_metrics`): the confusion matrix of the argmax over
    every class and, with `seen_only_too`, of the argmax over the seen classes alone."""
    unseen = torch.tensor(unseen_ids())
    unbiased = dataclasses.replace(options or InferenceOptions(), seen_bias=0.0)
    was_training = model.training
    model.eval()
    everything = ConfusionMatrix(model.num_classes)
    seen_only = ConfusionMatrix(model.num_classes) if seen_only_too else None
    try:
        for start in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            scores = model.predict_scores(torch.stack([s["image"] for s in samples]), options=unbiased)
            labels = torch.stack([s["label"] for s in samples])
            if scores.shape[-2:] != labels.shape[-2:]:
                scores = F.interpolate(scores, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
            everything.update(scores.argmax(1), labels)
            if seen_only is not None:
                scores[:, unseen] = -math.inf
                seen_only.update(scores.argmax(1), labels)
    finally:
        model.train(was_training)
    return everything, seen_only


def holdout_seen_miou(model: Any, holdout_set: Any) -> float:
    """Seen-class mIoU (%) on the held-out seen-only split, without the seen-class bias: how much the model has
    learnt, the quantity whose flattening shows convergence (the bias is a test-time shift, applied after
    training)."""
    return float(unbiased_metrics(model, holdout_set)["miou_seen"] or 0.0)
