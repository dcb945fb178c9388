"""Datasets read from the mmseg layouts (spec §4.5), written small by `fake_layouts`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_layouts import fake_label, make_coco_stuff, make_context, make_custom, make_voc, write_image, write_label
from PIL import Image
from torch.utils.data import DataLoader

from otseg.config import DataConfig
from otseg.data.datasets import (
    SegmentationDataset,
    build_dataset,
    collate_samples,
    read_custom_classes,
    read_label,
    seed_worker,
)
from otseg.data.facts import data_config_for
from otseg.data.transforms import TestTransform, TrainTransform
from otseg.model.presets import get_preset


def _raw(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def _label_path(ds: SegmentationDataset, index: int) -> Path:
    """The label file of sample `index`; every dataset here but the unlabelled one has them."""
    path = ds.samples[index][1]
    assert path is not None
    return path


def _label(ds: SegmentationDataset, index: int) -> np.ndarray:
    """`ds.load_label(index)`, which is not None for a labelled sample."""
    label = ds.load_label(index)
    assert label is not None
    return label


# ---- layouts load with the right lengths and label values -----------------------------------------------


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return make_voc(tmp_path_factory.mktemp("voc"))


def test_voc_lengths_and_reduce_zero_label(voc_root: Path) -> None:
    train = build_dataset("voc12", voc_root, "train")
    val = build_dataset("voc12", voc_root, "val")
    assert len(train) == 6 + 4 and len(val) == 3
    assert train.num_classes == 20 and train.classes.unseen == (15, 16, 17, 18, 19)
    # train.txt (SegmentationClass) first, then trainaug.txt (SegmentationClassAug), as the reference.
    train_labels = [_label_path(train, i) for i in range(len(train))]
    assert [p.parent.name for p in train_labels] == ["SegmentationClass"] * 6 + ["SegmentationClassAug"] * 4
    assert all(_label_path(val, i).parent.name == "SegmentationClass" for i in range(len(val)))
    for ds in (train, val):
        for i in (0, len(ds) - 1):
            raw = _raw(_label_path(ds, i)).astype(np.int64)
            label = _label(ds, i)
            assert label.dtype == np.uint8
            assert (label[raw == 0] == 255).all()  # background -> ignore
            assert (label[raw == 255] == 255).all()
            cls = (raw > 0) & (raw < 255)
            assert cls.any()
            np.testing.assert_array_equal(label[cls], raw[cls] - 1)  # class c -> c - 1


def test_voc_item_dict(voc_root: Path) -> None:
    ds = build_dataset("voc12", voc_root, "val", TestTransform(data_config_for(get_preset("voc12-inductive"))))
    item = ds[0]
    assert set(item) == {"image", "label", "path", "ori_shape"}
    assert item["image"].shape == (3, 512, 640) and item["image"].dtype == torch.float32
    assert item["label"].shape == (64, 80) and item["label"].dtype == torch.int64
    assert item["ori_shape"] == (64, 80) and item["path"].endswith("2008_000000.jpg")


def test_voc_root_variants_and_aug_list_fallback(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "data", n_train=2, n_val=1, n_aug=2, aug_list_name="aug.txt")
    for r in (root, root / "VOCdevkit", root / "VOCdevkit" / "VOC2012"):
        assert len(build_dataset("voc12", r, "train")) == 4  # mmseg's converter's aug.txt is accepted
        assert len(build_dataset("voc", r, "val")) == 1


def test_context_lengths_and_labels(tmp_path: Path) -> None:
    root = make_context(tmp_path)
    train = build_dataset("context59", root, "train")
    val = build_dataset("context", root, "val")
    assert len(train) == 6 and len(val) == 3 and train.num_classes == 59
    raw = _raw(_label_path(val, 1)).astype(np.int64)
    label = _label(val, 1)
    assert (label[raw == 0] == 255).all()
    np.testing.assert_array_equal(label[raw > 0], raw[raw > 0] - 1)
    assert label.max() < 59 or label.max() == 255
    # The reference's config reads {train,val}.txt directly in VOC2010/.
    voc = root / "VOCdevkit" / "VOC2010"
    shutil.move(voc / "ImageSets" / "SegmentationContext" / "val.txt", voc / "val.txt")
    assert len(build_dataset("context59", voc, "val")) == 3


def test_coco_lengths_and_unchanged_labels(tmp_path: Path) -> None:
    root = make_coco_stuff(tmp_path)
    train = build_dataset("coco_stuff164k", root, "train")
    val = build_dataset("coco", root / "coco_stuff164k", "val")
    assert len(train) == 6 and len(val) == 3 and train.num_classes == 171
    for ds in (train, val):
        np.testing.assert_array_equal(ds.load_label(0), _raw(_label_path(ds, 0)))  # no reduce_zero_label
    values = set(np.unique(np.concatenate([_label(train, i).ravel() for i in range(len(train))])).tolist())
    assert 0 in values and 255 in values and values <= {0, 19, 56, 112, 156, 170, 255}
    assert [p.name for p, _ in train.samples] == sorted(p.name for p, _ in train.samples)


def test_custom_split_folders_and_classes(tmp_path: Path) -> None:
    root = make_custom(tmp_path / "c", unseen=["car", 1])
    train = build_dataset("custom", root, "train")
    val = build_dataset("custom", root, "val")
    assert len(train) == 6 and len(val) == 3
    assert train.classes.class_names == ("sky", "tree", "road", "car")
    assert train.classes.unseen == (1, 3) and train.classes.seen == (0, 2)
    np.testing.assert_array_equal(train.load_label(0), _raw(_label_path(train, 0)))  # 0 is a real class
    assert read_custom_classes(root) == train.classes


def test_custom_single_folder_and_unlabelled(tmp_path: Path) -> None:
    root = make_custom(tmp_path / "c", n_train=4, unseen=None, split_folders=False)
    assert len(build_dataset("custom", root, "train")) == 4
    assert len(build_dataset("custom", root, "val")) == 4  # one folder serves every split
    assert build_dataset("custom", root, "val").classes.unseen == ()
    shutil.rmtree(root / "labels")
    with pytest.raises(FileNotFoundError, match="labels"):
        build_dataset("custom", root, "val")
    ds = build_dataset("custom", root, "val", require_labels=False)
    assert ds.load_label(0) is None and ds[0]["label"] is None


def test_decoded_cache_keeps_samples_within_its_budget(tmp_path: Path) -> None:
    root = make_custom(tmp_path / "c", n_train=3, n_val=1, size=(16, 20))
    plain = build_dataset("custom", root, "train")
    one_sample = 16 * 20 * 3 + 16 * 20  # image + label bytes
    cached = build_dataset("custom", root, "train", cache_bytes=2 * one_sample)
    expected = [plain.load(i) for i in range(3)]
    for _ in range(2):
        for i, (image, label) in enumerate(expected):
            got_image, got_label = cached.load(i)
            np.testing.assert_array_equal(got_image, image)
            np.testing.assert_array_equal(got_label, label)
    assert cached._cached_bytes == 2 * one_sample  # the third sample did not fit
    # Cached samples come from memory, the others from disk: remove the files and only the first two still load.
    for i, (image_path, _) in enumerate(cached.samples):
        image_path.unlink()
        _label_path(cached, i).unlink()
    assert cached.load(0)[0].shape == (16, 20, 3)
    label_1 = cached.load(1)[1]
    assert label_1 is not None and label_1.shape == (16, 20)
    with pytest.raises(OSError):
        cached.load(2)
    # Read-only: a transform that changed a cached array in place would change every later read of it.
    with pytest.raises(ValueError, match="read-only"):
        cached.load(0)[0][0, 0, 0] = 1
    with pytest.raises(ValueError, match="cache_bytes"):
        SegmentationDataset([], 2, cache_bytes=-1)


def test_custom_split_json_errors(tmp_path: Path) -> None:
    root = make_custom(tmp_path / "c", n_train=1, n_val=1, unseen=["bus"])
    with pytest.raises(ValueError, match="'bus'"):
        build_dataset("custom", root, "train")
    (root / "split.json").write_text(json.dumps({"unseen": [7]}))
    with pytest.raises(ValueError, match="unseen id 7"):
        read_custom_classes(root)
    (root / "split.json").write_text(json.dumps({"unsen": [1]}))
    with pytest.raises(ValueError, match=r"split\.json"):
        read_custom_classes(root)


# ---- transforms through the dataset, determinism, loading -----------------------------------------------


def test_train_items_are_crop_sized_and_deterministic_with_seed(voc_root: Path) -> None:
    cfg = DataConfig(img_scale=(160, 64), crop_size=48)
    ds = build_dataset("voc12", voc_root, "train", TrainTransform(cfg), seed=7)
    a, b = ds[3], ds[3]
    assert a["image"].shape == (3, 48, 48) and a["label"].shape == (48, 48)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    ds.set_epoch(1)
    c = ds[3]
    assert not torch.equal(a["image"], c["image"])
    # Same seed from a fresh dataset object (e.g. another worker process) gives the same sample.
    ds2 = build_dataset("voc12", voc_root, "train", TrainTransform(cfg), seed=7)
    assert torch.equal(ds2[3]["image"], a["image"])


def test_dataloader_with_workers(voc_root: Path) -> None:
    cfg = DataConfig(img_scale=(160, 64), crop_size=48)
    ds = build_dataset("voc12", voc_root, "train", TrainTransform(cfg))
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_samples, worker_init_fn=seed_worker)
    batches = list(loader)
    assert sum(b["image"].shape[0] for b in batches) == len(ds)
    first = batches[0]
    assert first["image"].shape == (4, 3, 48, 48) and first["label"].shape == (4, 48, 48)
    assert first["label"].dtype == torch.int64 and len(first["path"]) == 4 and first["ori_shape"][0] == (64, 80)


def test_dataset_from_plain_pairs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lab = fake_label(rng, (20, 30), [1, 2], background=0)
    write_label(tmp_path / "a.png", lab)
    write_image(tmp_path / "a.jpg", lab, rng)
    ds = SegmentationDataset([(tmp_path / "a.jpg", tmp_path / "a.png")], 3)
    item = ds[0]
    assert item["image"].shape == (3, 20, 30) and item["image"].max() > 1  # raw 0..255 values without transform
    assert torch.equal(item["label"], torch.from_numpy(lab.astype(np.int64)))


def test_palette_label_read_as_indices(tmp_path: Path) -> None:
    label = np.array([[0, 1, 15], [20, 255, 1]], np.uint8)
    write_label(tmp_path / "p.png", label, palette=True)
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), label)


# ---- start-up and load-time errors ---------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset("voc12", tmp_path / "nope", "train")


def test_missing_voc_aug_names_path_and_hint(tmp_path: Path) -> None:
    root = make_voc(tmp_path, n_train=1, n_val=1, n_aug=1)
    shutil.rmtree(root / "VOCdevkit" / "VOC2012" / "SegmentationClassAug")
    assert len(build_dataset("voc12", root, "val")) == 1  # val does not need the aug masks
    with pytest.raises(FileNotFoundError) as exc:
        build_dataset("voc12", root, "train")
    msg = str(exc.value)
    assert str(root / "VOCdevkit" / "VOC2012" / "SegmentationClassAug") in msg
    assert "SBD" in msg and "otseg prepare voc12" in msg and "benchmark.tgz" in msg and "mmseg" not in msg


def test_missing_voc_list_and_images(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="JPEGImages") as exc:
        build_dataset("voc12", tmp_path, "val")
    assert "VOCtrainval_11-May-2012" in str(exc.value)
    root = make_voc(tmp_path, n_train=1, n_val=2, n_aug=1)
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.txt"):
        build_dataset("voc12", root, "val")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2008_000000\n2008_000001\n")
    (voc / "JPEGImages" / "2008_000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"2008_000001\.jpg"):
        build_dataset("voc12", root, "val")


def test_missing_context_and_coco_hints(tmp_path: Path) -> None:
    root = make_context(tmp_path / "ctx", n_train=1, n_val=1)
    shutil.rmtree(root / "VOCdevkit" / "VOC2010" / "SegmentationClassContext")
    with pytest.raises(FileNotFoundError, match="SegmentationClassContext") as exc:
        build_dataset("context59", root, "val")
    assert "otseg prepare context59" in str(exc.value) and "trainval_merged.json" in str(exc.value)
    root = make_coco_stuff(tmp_path / "coco", n_train=1, n_val=1)
    shutil.rmtree(root / "coco_stuff164k" / "annotations" / "val2017")
    with pytest.raises(FileNotFoundError, match="annotations") as exc:
        build_dataset("coco_stuff164k", root, "val")
    assert "otseg prepare coco" in str(exc.value) and "stuffthingmaps_trainval2017.zip" in str(exc.value)
    label = next((root / "coco_stuff164k" / "annotations" / "train2017").iterdir())
    label.unlink()
    with pytest.raises(FileNotFoundError, match=label.name):
        build_dataset("coco_stuff164k", root, "train")


def test_unknown_name_and_split(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="valid names"):
        build_dataset("cityscapes", tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split"):
        build_dataset("voc12", tmp_path, "test")


def test_bad_label_value_names_file_and_value(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", n_train=1, n_val=1, n_aug=1)
    ds = build_dataset("voc12", root, "val")
    bad = _raw(_label_path(ds, 0)).copy()
    bad[5, 5] = 22  # raw 22 -> 21 after reduce_zero_label: VOC has ids 0..19
    write_label(_label_path(ds, 0), bad, palette=True)
    with pytest.raises(ValueError, match=r"\[21\]") as exc:
        ds[0]
    assert str(_label_path(ds, 0)) in str(exc.value) and "raw value" in str(exc.value)
    root = make_coco_stuff(tmp_path / "coco", n_train=1, n_val=1)
    ds = build_dataset("coco_stuff164k", root, "val")
    bad = _raw(_label_path(ds, 0)).copy()
    bad[0, 0] = 200
    write_label(_label_path(ds, 0), bad)
    with pytest.raises(ValueError, match=r"\[200\]") as exc:
        ds.load_label(0)
    assert _label_path(ds, 0).name in str(exc.value) and "0..170" in str(exc.value)


def test_size_mismatch_names_file_and_sizes(tmp_path: Path) -> None:
    root = make_coco_stuff(tmp_path, n_train=1, n_val=1)
    ds = build_dataset("coco_stuff164k", root, "val")
    write_label(_label_path(ds, 0), np.zeros((30, 40), np.uint8))
    with pytest.raises(ValueError, match="size mismatch") as exc:
        ds[0]
    msg = str(exc.value)
    assert ds.samples[0][0].name in msg and "64x80" in msg and "30x40" in msg


def test_corrupt_image_and_rgb_label(tmp_path: Path) -> None:
    root = make_custom(tmp_path / "c", n_train=2, n_val=1)
    ds = build_dataset("custom", root, "train")
    img_path = ds.samples[0][0]
    data = img_path.read_bytes()
    img_path.write_bytes(data[: len(data) // 2])  # truncated JPEG
    with pytest.raises(OSError, match=img_path.name):
        ds[0]
    img_path.write_bytes(b"not an image at all")
    with pytest.raises(OSError, match=img_path.name):
        ds[0]
    lab_path = _label_path(ds, 1)
    Image.new("RGB", (80, 64), (128, 0, 0)).save(lab_path)
    with pytest.raises(ValueError, match="mode-RGB") as exc:
        ds[1]
    assert lab_path.name in str(exc.value)
