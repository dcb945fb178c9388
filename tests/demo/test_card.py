"""The world card's definitions, recomputed on small cases (not the shipped values)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from otseg.demo.card import linear_probe_miou, prompt_geometry, training_free_metrics
from otseg.demo.curves import last_fraction_change, plot_curves, step_change_sd, trend_change, value_range
from otseg.demo.table import aggregate_rows, format_table
from otseg.demo.world import CLASS_NAMES, seen_ids, unseen_ids

REFERENCE_EMBEDDINGS = Path(__file__).resolve().parents[3] / "shared" / "reference-embeddings"


def test_prompt_geometry_by_hand():
    # Two classes, two prompts each, in 3-D: prompts of class 0 at +-30 degrees around x, class 1 around y.
    a = math.radians(30)
    e = torch.tensor(
        [
            [[math.cos(a), 0.0, math.sin(a)], [math.cos(a), 0.0, -math.sin(a)]],
            [[0.0, math.cos(a), math.sin(a)], [0.0, math.cos(a), -math.sin(a)]],
        ]
    )
    g = prompt_geometry(e)
    within = math.cos(2 * a)  # the two prompts of a class are 60 degrees apart
    assert g["within_class_cosine"] == pytest.approx(within)
    assert g["between_class_cosine"] == pytest.approx(0.0)  # the class means are x and y
    assert g["prompt_spread_ratio"] == pytest.approx((1 - within) / 1.0)


def test_prompt_geometry_ignores_scale_and_rejects_bad_shapes():
    e = torch.randn(5, 3, 8, generator=torch.Generator().manual_seed(0))
    assert prompt_geometry(e * 7.0)["prompt_spread_ratio"] == pytest.approx(prompt_geometry(e)["prompt_spread_ratio"])
    with pytest.raises(ValueError, match="K >= 2, N >= 2"):
        prompt_geometry(torch.randn(4, 1, 8))


@pytest.mark.skipif(not REFERENCE_EMBEDDINGS.is_dir(), reason="needs ../shared/reference-embeddings")
@pytest.mark.parametrize(("name", "ratio", "between"), [("voc12", 0.48, 0.835), ("coco", 0.369, 0.794)])
def test_prompt_geometry_of_the_released_embeddings(name, ratio, between):
    g = prompt_geometry(np.load(REFERENCE_EMBEDDINGS / f"{name}_otseg.npy"))
    assert g["prompt_spread_ratio"] == pytest.approx(ratio, abs=0.002)
    assert g["between_class_cosine"] == pytest.approx(between, abs=0.002)


def _blocks(labels_patch: np.ndarray, scale: int = 4) -> np.ndarray:
    return np.kron(labels_patch, np.ones((scale, scale), np.uint8))


def test_linear_probe_separates_separable_features_and_not_noise():
    rng = np.random.default_rng(0)
    k, d = 4, 8
    centres = torch.eye(d)[:k] * 3
    patch_labels = rng.integers(0, k, (40, 4, 4)).astype(np.uint8)
    feats = centres[torch.from_numpy(patch_labels.astype(np.int64))].permute(0, 3, 1, 2)  # (B, D, 4, 4)
    feats = feats + 0.05 * torch.randn(feats.shape, generator=torch.Generator().manual_seed(1))
    labels = _blocks(patch_labels)  # (B, 16, 16): each patch covers 4x4 pixels
    miou = linear_probe_miou(feats[:30], labels[:30], feats[30:], labels[30:], num_classes=k, train_stride=1)
    assert miou > 80.0
    noise = torch.randn(feats.shape, generator=torch.Generator().manual_seed(2))
    chance = linear_probe_miou(noise[:30], labels[:30], noise[30:], labels[30:], num_classes=k, train_stride=1)
    assert chance < 40.0


def test_training_free_scores_features_against_prompts():
    k, d = len(CLASS_NAMES), 32
    text = torch.nn.functional.normalize(torch.randn(k, 2, d, generator=torch.Generator().manual_seed(0)), dim=-1)
    means = torch.nn.functional.normalize(text.mean(1), dim=-1)
    # One class per image (bilinear upsampling would blend scores across patch borders otherwise).
    patch_labels = np.repeat(np.arange(k, dtype=np.uint8), 16).reshape(k, 4, 4)
    feats = means[torch.from_numpy(patch_labels.astype(np.int64))].permute(0, 3, 1, 2)
    labels = _blocks(patch_labels)
    row = training_free_metrics(feats, text, labels)
    assert row["miou_seen"] == pytest.approx(100.0) and row["miou_unseen"] == pytest.approx(100.0)
    # Features pointing at the wrong class score zero.
    shifted = means[torch.from_numpy((patch_labels.astype(np.int64) + 1) % k)].permute(0, 3, 1, 2)
    assert training_free_metrics(shifted, text, labels)["hiou"] == pytest.approx(0.0)
    assert set(seen_ids()) | set(unseen_ids()) == set(range(k))


def test_last_fraction_change_and_plot(tmp_path):
    curve = [(100, 10.0), (200, 30.0), (300, 40.0), (400, 44.5), (500, 45.0)]
    assert last_fraction_change(curve) == pytest.approx(0.5)  # points at >= 400: 44.5 and 45.0
    assert last_fraction_change(curve, fraction=0.5) == pytest.approx(5.0)  # from 250 on: 40, 44.5 and 45
    assert last_fraction_change([(10, 1.0)]) is None
    png = plot_curves({"a": curve, "b": [(s, v / 2) for s, v in curve]}, tmp_path / "c.png")

    with Image.open(png) as im:
        assert im.size == (760, 420)
        assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 4  # not a blank page
    # The value axis follows the data, so a curve that moves 5 points fills most of the plot's height.
    assert value_range({"a": curve}) == (10, 50) and value_range({"a": [(1, 40.0), (2, 45.0)]}) == (40, 50)
    assert value_range({"a": [(1, 99.5)]}) == (90, 100) and value_range({"a": [(1, 0.0)]}) == (0, 10)
    assert value_range({}) == (0, 100)
    plot_curves({"a": [(1, 40.0), (2, 45.0)]}, tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as im:
        plot_area = np.asarray(im.convert("RGB"))[:, :560]  # left of the legend
    rows = np.nonzero((plot_area == (31, 119, 180)).all(axis=2))[0]
    assert rows.max() - rows.min() > 150  # 5 of the axis's 10 points, of a 346-px plot (on 0-100 it was 17 px)


def test_trend_change_separates_a_rising_curve_from_scatter():
    # A straight line: the trend is its rise over the last 20 % (0.01 per step x 200 steps), no scatter.
    line = [(s, 10.0 + 0.01 * s) for s in range(100, 1001, 100)]
    change, scatter = trend_change(line)
    assert change == pytest.approx(2.0) and scatter == pytest.approx(0.0, abs=1e-9)
    assert last_fraction_change(line) == pytest.approx(2.0)
    # Level but jittering by ±1.5 between evaluations: the largest change says 3 points, the trend about none.
    jitter = [(s, 60.0 + (1.5 if i % 2 else -1.5)) for i, s in enumerate(range(100, 1001, 100))]
    change, scatter = trend_change(jitter)
    assert last_fraction_change(jitter) == pytest.approx(3.0)
    # The last 40 %: 61.5, 58.5, 61.5, 58.5, 61.5; a level line at 60.3; residuals 1.2 (x3) and -1.8 (x2), 3 dof.
    assert change == pytest.approx(0.0, abs=1e-9) and scatter == pytest.approx(((3 * 1.2**2 + 2 * 1.8**2) / 3) ** 0.5)
    # The fit uses the last 40 % by default; fewer than three points there give None.
    assert trend_change(line[-2:]) is None and trend_change([]) is None
    assert trend_change(line, fraction=0.5)[0] == pytest.approx(5.0)


def test_step_change_sd_reads_the_second_half_only():
    # Second half of 8 values: 10, 12, 10, 13; changes +2, -2, +3 (mean 1); the first half's big jump is left out.
    values = [0.0, 50.0, 0.0, 50.0, 10.0, 12.0, 10.0, 13.0]
    assert step_change_sd(values) == pytest.approx(((1**2 + 3**2 + 2**2) / 3) ** 0.5)
    assert step_change_sd([5.0, 6.0, 7.0, 8.0, 9.0, 10.0]) == pytest.approx(0.0)  # a straight line does not jump
    assert step_change_sd([1.0, 2.0, 3.0, 4.0]) is None  # one change in the second half


def test_aggregate_rows_mean_and_std():
    def rows(s, u):
        return [{"method": "otseg", "setting": "inductive", "miou_seen": s, "miou_unseen": u, "hiou": None}]

    agg = aggregate_rows([rows(10.0, 1.0), rows(20.0, 3.0), rows(30.0, None)])
    row = agg[0]
    assert row["miou_seen"] == 20.0 and row["miou_seen_std"] == 10.0
    assert row["miou_unseen"] == 2.0 and row["miou_unseen_std"] == pytest.approx(1.41, abs=0.01)
    assert row["hiou"] is None and row["hiou_std"] is None
    assert [p["miou_seen"] for p in row["per_seed"]] == [10.0, 20.0, 30.0]
    assert "| OTSeg | inductive | 20.0 ± 10.0 | 2.0 ± 1.4 | - |" in format_table(agg)


def test_linear_probe_is_not_capped_by_regularisation_on_a_narrow_cone():
    # Unit features whose classes differ by a small angle, as CLIP's do: separable, but only with large weights.
    rng = np.random.default_rng(0)
    k, d = 4, 8
    base = torch.zeros(d)
    base[-1] = 1.0
    centres = torch.nn.functional.normalize(base + 0.02 * torch.eye(d)[:k], dim=-1)
    patch_labels = rng.integers(0, k, (40, 4, 4)).astype(np.uint8)
    feats = centres[torch.from_numpy(patch_labels.astype(np.int64))].permute(0, 3, 1, 2)
    feats = feats + 0.002 * torch.randn(feats.shape, generator=torch.Generator().manual_seed(1))
    feats = torch.nn.functional.normalize(feats, dim=1)
    labels = _blocks(patch_labels)
    miou = linear_probe_miou(feats[:30], labels[:30], feats[30:], labels[30:], num_classes=k, train_stride=1)
    assert miou > 85.0  # the earlier default (weight decay 1e-4, 60 steps) gave 55 here
