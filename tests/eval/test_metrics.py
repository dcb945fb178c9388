"""ConfusionMatrix / compute_metrics / format_markdown: hand-computed cases and independent cross-checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from otseg.eval.metrics import ConfusionMatrix, compute_metrics, format_markdown

NAMES4 = ("a", "b", "c", "d")


def _bincount_matrix(pred: np.ndarray, gt: np.ndarray, k: int, ignore: int = 255) -> np.ndarray:
    """Independent reference: np.bincount over the non-ignored pixels."""
    keep = gt != ignore
    return np.bincount(gt[keep].astype(np.int64) * k + pred[keep], minlength=k * k).reshape(k, k)


def _random_pair(rng: np.random.Generator, k: int, shape=(3, 37, 41), absent=(), p_ignore=0.1):
    """Random (pred, gt) with some ignore pixels; classes in `absent` appear in neither."""
    allowed = np.array([c for c in range(k) if c not in absent])
    gt = rng.choice(allowed, size=shape)
    gt[rng.random(shape) < p_ignore] = 255
    # Predictions mostly right so IoUs are not all near 1/k.
    pred = np.where(rng.random(shape) < 0.6, np.where(gt == 255, allowed[0], gt), rng.choice(allowed, size=shape))
    return pred.astype(np.int64), gt.astype(np.int64)


# ---- hand-computed cases ------------------------------------------------------------------------------------


def test_hand_computed_matrix_and_metrics():
    # gt   : a a b b | c 255
    # pred : a b b b | a d
    gt = torch.tensor([[0, 0, 1, 1], [2, 255, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 3, 2, 2]])
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 1
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[2, 0] = 1
    expected[2, 2] = 2
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    assert cm.num_ignored == 1  # the pixel with gt 255 (predicted 3) is skipped, so d stays absent
    assert cm.matrix.dtype == torch.int64

    m = compute_metrics(cm, NAMES4, seen=[0, 1], unseen=[2, 3])
    # a: TP 1, gt 2, pred 2 -> 1/3 ; b: TP 2, gt 2, pred 3 -> 2/3 ; c: TP 2, gt 3, pred 2 -> 2/3 ; d: absent.
    iou = m["per_class_iou"]
    assert iou["a"] == pytest.approx(100 / 3)
    assert iou["b"] == pytest.approx(200 / 3)
    assert iou["c"] == pytest.approx(200 / 3)
    assert iou["d"] is None
    assert m["miou_seen"] == pytest.approx(50.0)
    assert m["miou_unseen"] == pytest.approx(200 / 3)  # d (absent) left out of the mean, not counted as 0
    s, u = 50.0, 200 / 3
    assert m["hiou"] == pytest.approx(2 * s * u / (s + u))
    assert m["miou"] == pytest.approx((100 / 3 + 400 / 3) / 3)
    assert m["aacc"] == pytest.approx(500 / 7)
    acc = m["per_class_acc"]
    assert acc["a"] == pytest.approx(50.0)
    assert acc["b"] == pytest.approx(100.0)
    assert acc["c"] == pytest.approx(200 / 3)
    assert acc["d"] is None
    assert m["num_pixels"] == 7
    json.dumps(m, allow_nan=False)  # JSON-ready: no NaN anywhere


def test_predicted_but_absent_from_gt_counts_as_zero():
    """Union > 0 (false positives only) gives IoU 0, which *is* in the mean; only union 0 is NaN."""
    gt = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 2])
    m = compute_metrics(_matrix(pred, gt, 3), ("x", "y", "z"), seen=[0, 1, 2], unseen=[])
    assert m["per_class_iou"]["z"] == 0.0
    assert m["per_class_acc"]["z"] is None  # no ground-truth pixels: accuracy undefined
    assert m["miou"] == pytest.approx((100 + 50 + 0) / 3)


def test_hiou_zero_when_both_means_zero_and_none_when_undefined():
    gt = torch.tensor([0, 1])
    pred = torch.tensor([1, 0])
    m = compute_metrics(_matrix(pred, gt, 2), ("x", "y"), seen=[0], unseen=[1])
    assert m["miou_seen"] == 0.0 and m["miou_unseen"] == 0.0
    assert m["hiou"] == 0.0

    # Unseen classes all absent: mIoU(U) is undefined, and so is hIoU.
    gt = torch.tensor([0, 0])
    m = compute_metrics(_matrix(gt, gt, 2), ("x", "y"), seen=[0], unseen=[1])
    assert m["miou_seen"] == 100.0
    assert m["miou_unseen"] is None and m["hiou"] is None


def test_fully_supervised_reports_miou_over_all():
    gt = torch.tensor([0, 1, 2, 2])
    pred = torch.tensor([0, 1, 2, 1])
    m = compute_metrics(_matrix(pred, gt, 3), ("x", "y", "z"), seen=[0, 1, 2], unseen=[])
    assert m["miou_unseen"] is None and m["hiou"] is None
    assert m["miou_seen"] == pytest.approx(m["miou"])
    assert m["miou"] == pytest.approx((100 + 50 + 50) / 3)
    assert m["unseen_classes"] == []


def test_all_ignored_gives_undefined_metrics():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([255, 255]))
    m = compute_metrics(cm, ("x", "y", "z"), seen=[0, 1], unseen=[2])
    assert m["aacc"] is None and m["miou"] is None and m["miou_seen"] is None
    assert m["num_pixels"] == 0


def test_accumulation_equals_one_big_update():
    rng = np.random.default_rng(0)
    k = 7
    pairs = [_random_pair(rng, k, shape=(2, 19 + i, 23)) for i in range(5)]
    acc = ConfusionMatrix(k)
    for pred, gt in pairs:
        acc.update(torch.from_numpy(pred), torch.from_numpy(gt))
    big = ConfusionMatrix(k)
    big.update(
        torch.cat([torch.from_numpy(p).reshape(-1) for p, _ in pairs]),
        torch.cat([torch.from_numpy(g).reshape(-1) for _, g in pairs]),
    )
    assert torch.equal(acc.matrix, big.matrix)
    # Dataset-level IoU is not the mean of per-image IoUs: it comes from the summed matrix.
    names = [str(i) for i in range(k)]
    assert compute_metrics(acc, names, range(4), range(4, k)) == compute_metrics(big, names, range(4), range(4, k))


def test_merge_and_state_dict_roundtrip():
    rng = np.random.default_rng(1)
    k = 5
    (p1, g1), (p2, g2) = _random_pair(rng, k), _random_pair(rng, k)
    a, b, both = ConfusionMatrix(k), ConfusionMatrix(k), ConfusionMatrix(k)
    a.update(torch.from_numpy(p1), torch.from_numpy(g1))
    b.update(torch.from_numpy(p2), torch.from_numpy(g2))
    both.update(torch.from_numpy(p1), torch.from_numpy(g1))
    both.update(torch.from_numpy(p2), torch.from_numpy(g2))
    assert a.merge(b) is a
    assert torch.equal(a.matrix, both.matrix)
    assert a.num_ignored == both.num_ignored

    restored = ConfusionMatrix(k)
    restored.load_state_dict(a.state_dict())
    assert torch.equal(restored.matrix, a.matrix)
    with pytest.raises(ValueError, match="classes"):
        ConfusionMatrix(k + 1).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="merge"):
        ConfusionMatrix(k + 1).merge(a)
    a.reset()
    assert int(a.matrix.sum()) == 0


def test_state_dict_is_weights_only_loadable(tmp_path):
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 2, 255]))
    torch.save(cm.state_dict(), tmp_path / "cm.pt")
    restored = ConfusionMatrix(3)
    restored.load_state_dict(torch.load(tmp_path / "cm.pt", weights_only=True))
    assert torch.equal(restored.matrix, cm.matrix)


def test_all_reduce_without_distributed_is_noop():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    before = cm.matrix.clone()
    assert cm.all_reduce() is cm
    assert torch.equal(cm.matrix, before)


def test_all_reduce_sums_across_ranks(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("gloo backend unavailable")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    # world_size 1 exercises the initialised branch without spawning processes.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        cm = ConfusionMatrix(2)
        cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]))
        before = cm.matrix.clone()
        cm.all_reduce()
        assert torch.equal(cm.matrix, before)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_unchecked_update_does_not_sync():
    k = 5
    gt = torch.randint(0, k, (2, 64, 64), device="cuda")
    gt[:, :4] = 255
    pred = torch.randint(0, k, (2, 64, 64), device="cuda")
    cm = ConfusionMatrix(k, device="cuda")
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside update raises
    try:
        cm.update(pred, gt, check=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert cm.matrix.device.type == "cuda"
    np.testing.assert_array_equal(cm.matrix.cpu().numpy(), _bincount_matrix(pred.cpu().numpy(), gt.cpu().numpy(), k))


# ---- validation -----------------------------------------------------------------------------------------------


def test_out_of_range_gt_raises_naming_source_and_value():
    cm = ConfusionMatrix(4)
    with pytest.raises(ValueError, match=r"ground-truth value\(s\) \[4, 7\].*img_001\.png"):
        cm.update(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 4, 7, 255]), source="img_001.png")
    with pytest.raises(ValueError, match=r"ground-truth value\(s\) \[-1\].*0\.\.3"):
        cm.update(torch.tensor([0]), torch.tensor([-1]))
    assert int(cm.matrix.sum()) == 0  # a rejected update adds nothing


def test_out_of_range_pred_raises_naming_source_and_value():
    cm = ConfusionMatrix(4)
    # 255 is only an ignore value in the ground truth; a prediction of 255 is an error even on an ignored pixel.
    with pytest.raises(ValueError, match=r"prediction value\(s\) \[9, 255\].*b\.png"):
        cm.update(torch.tensor([0, 9, 255]), torch.tensor([0, 1, 255]), source="b.png")


def test_many_offending_values_are_summarised():
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match=r"\(40 distinct\)"):
        cm.update(torch.arange(40) + 10, torch.zeros(40, dtype=torch.long))


def test_unchecked_update_defers_error_and_never_aliases():
    cm = ConfusionMatrix(3)
    # gt 1 * 3 + pred 5 would alias cell (2, 2) if the flat index were not guarded.
    cm.update(torch.tensor([5, 0]), torch.tensor([1, 0]), check=False)
    assert cm.num_invalid == 1
    assert int(cm.matrix.sum()) == 1 and int(cm.matrix[0, 0]) == 1
    with pytest.raises(ValueError, match="1 pixel"):
        compute_metrics(cm, ("x", "y", "z"), [0, 1], [2])


def test_shape_and_dtype_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"shape.*f\.png"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), source="f.png")
    with pytest.raises(TypeError, match="integer"):
        cm.update(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="ignore_index"):
        ConfusionMatrix(300, ignore_index=255)


def test_uint8_inputs_with_ignore():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2], dtype=torch.uint8), torch.tensor([0, 255, 2], dtype=torch.uint8))
    assert cm.num_ignored == 1
    assert int(cm.matrix.trace()) == 2


def test_compute_metrics_argument_errors():
    m = np.eye(3, dtype=np.int64)
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(m, ("x", "y"), [0], [1])
    with pytest.raises(ValueError, match="out of range"):
        compute_metrics(m, ("x", "y", "z"), [0], [3])
    with pytest.raises(ValueError, match="both seen and unseen"):
        compute_metrics(m, ("x", "y", "z"), [0, 1], [1, 2])
    with pytest.raises(ValueError, match="unique"):
        compute_metrics(m, ("x", "y", "x"), [0], [1])


# ---- independent cross-checks --------------------------------------------------------------------------------


def _matrix(pred: torch.Tensor, gt: torch.Tensor, k: int) -> torch.Tensor:
    cm = ConfusionMatrix(k)
    cm.update(pred, gt)
    return cm.matrix


def _numpy_reference_iou(mat: np.ndarray) -> np.ndarray:
    tp = np.diag(mat).astype(float)
    union = mat.sum(0) + mat.sum(1) - tp
    with np.errstate(invalid="ignore"):
        return np.where(union > 0, tp / union, np.nan)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_bincount(seed):
    rng = np.random.default_rng(seed)
    k = 11
    absent = (3, 8)
    cm = ConfusionMatrix(k)
    total = np.zeros((k, k), dtype=np.int64)
    for _ in range(4):
        pred, gt = _random_pair(rng, k, absent=absent)
        cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
        total += _bincount_matrix(pred, gt, k)
    np.testing.assert_array_equal(cm.matrix.numpy(), total)

    names = [f"c{i}" for i in range(k)]
    unseen = [2, 3, 9]
    seen = [i for i in range(k) if i not in unseen]
    m = compute_metrics(cm, names, seen, unseen)
    ref = _numpy_reference_iou(total) * 100
    for i, name in enumerate(names):
        if i in absent:
            assert m["per_class_iou"][name] is None
        else:
            assert m["per_class_iou"][name] == pytest.approx(ref[i])
    assert m["miou_seen"] == pytest.approx(np.nanmean(ref[seen]))
    assert m["miou_unseen"] == pytest.approx(np.nanmean(ref[unseen]))  # class 3 absent: mean over 2 and 9
    assert m["miou"] == pytest.approx(np.nanmean(ref))
    assert m["aacc"] == pytest.approx(100 * np.trace(total) / total.sum())


def test_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics")
    from torchmetrics.functional.classification import multiclass_confusion_matrix, multiclass_jaccard_index

    rng = np.random.default_rng(7)
    k = 9
    absent = (4,)
    pred, gt = _random_pair(rng, k, shape=(4, 53, 47), absent=absent)
    pred_t, gt_t = torch.from_numpy(pred), torch.from_numpy(gt)

    cm = ConfusionMatrix(k)
    cm.update(pred_t, gt_t)
    ref_cm = multiclass_confusion_matrix(pred_t, gt_t, num_classes=k, ignore_index=255)
    assert torch.equal(cm.matrix, ref_cm.to(torch.int64)), f"torchmetrics {tm.__version__}"

    names = [f"c{i}" for i in range(k)]
    m = compute_metrics(cm, names, seen=[0, 1, 2, 3, 4, 5], unseen=[6, 7, 8])
    ref_iou = multiclass_jaccard_index(pred_t, gt_t, num_classes=k, average=None, ignore_index=255) * 100
    for i, name in enumerate(names):
        if i in absent:
            # Absent class rule: torchmetrics scores it 0, mmseg (and we) leave it undefined and out of the means.
            assert float(ref_iou[i]) == 0.0
            assert m["per_class_iou"][name] is None
        else:
            assert m["per_class_iou"][name] == pytest.approx(float(ref_iou[i]), rel=1e-5)
    present = [i for i in range(k) if i not in absent]
    assert m["miou"] == pytest.approx(float(ref_iou[present].mean()), rel=1e-5)
    assert m["miou_seen"] == pytest.approx(float(ref_iou[[0, 1, 2, 3, 5]].mean()), rel=1e-5)
    # torchmetrics' per-class result gives an absent class `zero_division` (0 by default); with NaN it agrees
    # with us exactly. Its macro mean (1.x) already drops classes absent from both gt and prediction, like mmseg.
    ref_nan = multiclass_jaccard_index(
        pred_t, gt_t, num_classes=k, average=None, ignore_index=255, zero_division=float("nan")
    )
    assert [i for i in range(k) if math.isnan(float(ref_nan[i]))] == list(absent)
    tm_macro = float(multiclass_jaccard_index(pred_t, gt_t, num_classes=k, average="macro", ignore_index=255)) * 100
    assert tm_macro == pytest.approx(m["miou"], rel=1e-5)


# ---- presentation ------------------------------------------------------------------------------------------------


def test_format_markdown():
    gt = torch.tensor([0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 2])
    m = compute_metrics(_matrix(pred, gt, 4), ("cat", "dog|wolf", "sky", "sea"), seen=[0, 1], unseen=[2, 3])
    m["num_images"] = 1
    md = format_markdown(m, title="voc12-inductive")
    lines = md.splitlines()
    assert lines[0] == "## voc12-inductive"
    assert "| mIoU(S) | mIoU(U) | hIoU | mIoU | aAcc |" in lines
    summary = lines[lines.index("| mIoU(S) | mIoU(U) | hIoU | mIoU | aAcc |") + 2]
    s, u = (50 + 200 / 3) / 2, 100.0
    h = 2 * s * u / (s + u)
    assert summary == f"| {s:.2f} | {u:.2f} | {h:.2f} | {(s * 2 + u) / 3:.2f} | 80.00 |"
    assert "| 1 | dog\\|wolf | seen | 66.67 | 100.00 |" in lines  # pipes escaped
    assert "| 2 | sky | unseen | 100.00 | 100.00 |" in lines
    assert "| 3 | sea | unseen | — | — |" in lines  # absent class
    assert "1 images, 5 scored pixels." in md
    assert not math.isnan(m["miou"])
