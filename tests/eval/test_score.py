"""score_folders / write_results on small PNG folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from otseg.eval.metrics import compute_metrics
from otseg.eval.score import read_label_map, score_folders, write_results
from otseg.model.presets import get_preset

K = 6
NAMES = tuple(f"class{i}" for i in range(K))
SEEN, UNSEEN = [0, 1, 2, 3], [4, 5]


def _save(path, arr: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if mode == "P":  # palette PNG, as VOC ground truth is stored: the indices are the labels
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def _make_folders(tmp_path, n=5, seed=0, gt_mode="L"):
    """Random label maps of varying sizes; returns (pred_dir, gt_dir, list of (pred, gt) arrays)."""
    rng = np.random.default_rng(seed)
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    arrays = []
    for i in range(n):
        shape = (20 + 3 * i, 31 - i)
        gt = rng.integers(0, K, size=shape)
        gt[rng.random(shape) < 0.15] = 255
        pred = np.where(rng.random(shape) < 0.5, np.where(gt == 255, 0, gt), rng.integers(0, K, size=shape))
        _save(gt_dir / f"img_{i:03d}.png", gt, gt_mode)
        _save(pred_dir / f"img_{i:03d}.png", pred)
        arrays.append((pred, gt))
    return pred_dir, gt_dir, arrays


def _reference(arrays) -> np.ndarray:
    total = np.zeros((K, K), dtype=np.int64)
    for pred, gt in arrays:
        keep = gt != 255
        total += np.bincount(gt[keep] * K + pred[keep], minlength=K * K).reshape(K, K)
    return total


@pytest.mark.parametrize("gt_mode", ["L", "P"])
def test_score_folders_matches_reference(tmp_path, gt_mode):
    pred_dir, gt_dir, arrays = _make_folders(tmp_path, gt_mode=gt_mode)
    m = score_folders(pred_dir, gt_dir, NAMES, SEEN, UNSEEN)
    expected = compute_metrics(_reference(arrays), NAMES, SEEN, UNSEEN)
    assert m.pop("num_images") == 5
    assert m == expected  # identical: same matrix, same code path
    assert m["num_pixels"] == sum(int((gt != 255).sum()) for _, gt in arrays)


def test_reduce_zero_label(tmp_path):
    """Raw VOC-style GT (0 = background, 1..K = classes, 255 boundary) scored with the reference's mapping."""
    rng = np.random.default_rng(3)
    gt = rng.integers(0, K + 1, size=(16, 16))
    gt[0, :] = 255
    pred = rng.integers(0, K, size=(16, 16))
    _save(tmp_path / "gt" / "a.png", gt)
    _save(tmp_path / "pred" / "a.png", pred)
    m = score_folders(tmp_path / "pred", tmp_path / "gt", NAMES, SEEN, UNSEEN, reduce_zero_label=True)
    reduced = np.where((gt == 0) | (gt == 255), 255, gt - 1)
    assert m["num_pixels"] == int((reduced != 255).sum())
    assert m == {**compute_metrics(_reference([(pred, reduced)]), NAMES, SEEN, UNSEEN), "num_images": 1}
    # Without the mapping, raw id K is out of range for K classes and is reported, not dropped.
    with pytest.raises(ValueError, match=rf"ground-truth value\(s\) \[{K}\].*a\.png"):
        score_folders(tmp_path / "pred", tmp_path / "gt", NAMES, SEEN, UNSEEN)


def test_missing_prediction(tmp_path):
    pred_dir, gt_dir, _ = _make_folders(tmp_path, n=4)
    (pred_dir / "img_001.png").unlink()
    (pred_dir / "img_003.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 of 4 .*img_001\.png, img_003\.png"):
        score_folders(pred_dir, gt_dir, NAMES, SEEN, UNSEEN)


def test_extra_prediction(tmp_path):
    pred_dir, gt_dir, _ = _make_folders(tmp_path, n=2)
    for i in range(7):
        _save(pred_dir / f"zz_{i}.png", np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"7 prediction\(s\) .*zz_0\.png.*\(2 more\)"):
        score_folders(pred_dir, gt_dir, NAMES, SEEN, UNSEEN)


def test_empty_or_missing_gt_folder(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.png"):
        score_folders(tmp_path / "pred", tmp_path / "gt", NAMES, SEEN, UNSEEN)
    with pytest.raises(NotADirectoryError):
        score_folders(tmp_path / "nope", tmp_path / "gt", NAMES, SEEN, UNSEEN)


def test_size_mismatch_names_both_files(tmp_path):
    _save(tmp_path / "gt" / "x.png", np.zeros((10, 12)))
    _save(tmp_path / "pred" / "x.png", np.zeros((10, 11)))
    with pytest.raises(ValueError, match=r"size mismatch.*pred[/\\]x\.png.*11x10.*gt[/\\]x\.png.*12x10"):
        score_folders(tmp_path / "pred", tmp_path / "gt", NAMES, SEEN, UNSEEN)


def test_out_of_range_prediction_names_file_and_value(tmp_path):
    pred_dir, gt_dir, arrays = _make_folders(tmp_path, n=3)
    bad = arrays[1][0].copy()
    bad[2, 3] = 17
    _save(pred_dir / "img_001.png", bad)
    with pytest.raises(ValueError, match=r"prediction value\(s\) \[17\].*img_001\.png"):
        score_folders(pred_dir, gt_dir, NAMES, SEEN, UNSEEN)


def test_unreadable_png_names_file(tmp_path):
    pred_dir, gt_dir, _ = _make_folders(tmp_path, n=2)
    (pred_dir / "img_000.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"label map .*img_000\.png") as info:
        score_folders(pred_dir, gt_dir, NAMES, SEEN, UNSEEN)
    assert str(info.value).count("img_000.png") == 1  # named once, not wrapped in a second "cannot read ..."
    # A truncated file fails at decode time and is reported the same way.
    data = (gt_dir / "img_001.png").read_bytes()
    (gt_dir / "img_001.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"label map .*img_001\.png is corrupt or truncated") as info:
        read_label_map(gt_dir / "img_001.png")
    assert str(info.value).count("img_001.png") == 1


def test_rgb_png_rejected(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(path)
    with pytest.raises(ValueError, match=r"rgb\.png is not a single-channel.*RGB"):
        read_label_map(path)


def test_16bit_png_accepted(tmp_path):
    path = tmp_path / "wide.png"
    arr = np.array([[0, 1], [300, 2]], dtype=np.uint16)
    Image.fromarray(arr).save(path)
    np.testing.assert_array_equal(read_label_map(path), arr)


def test_write_results(tmp_path):
    pred_dir, gt_dir, _ = _make_folders(tmp_path, n=2)
    m = score_folders(pred_dir, gt_dir, NAMES, SEEN, UNSEEN, progress=True)
    json_path, md_path = write_results(m, tmp_path / "out" / "results.json", title="toy")
    assert md_path == tmp_path / "out" / "results.md"
    assert json.loads(json_path.read_text()) == m
    md = md_path.read_text()
    assert md.startswith("## toy\n") and "| mIoU(S) | mIoU(U) | hIoU | mIoU | aAcc |" in md
    assert "2 images" in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json", "results.md"]  # no temp files
    with pytest.raises(ValueError, match=r"\.md"):
        write_results(m, tmp_path / "out" / "results.md")


def test_with_a_preset(tmp_path):
    """The API the `otseg score` command calls: preset → names and split; absent classes are None."""
    cfg = get_preset("voc12-inductive")
    rng = np.random.default_rng(5)
    gt = rng.choice([0, 1, 15, 255], size=(24, 24))  # 15 is an unseen VOC class
    pred = np.where(gt == 255, 0, gt)
    _save(tmp_path / "gt" / "2007_000033.png", gt)
    _save(tmp_path / "pred" / "2007_000033.png", pred)
    m = score_folders(tmp_path / "pred", tmp_path / "gt", cfg.class_names, cfg.seen_classes, cfg.unseen_classes)
    assert 15 in cfg.unseen_classes
    assert m["miou_seen"] == 100.0 and m["miou_unseen"] == 100.0 and m["hiou"] == 100.0
    present = {cfg.class_names[i] for i in (0, 1, 15)}
    assert all((v is None) == (name not in present) for name, v in m["per_class_iou"].items())
