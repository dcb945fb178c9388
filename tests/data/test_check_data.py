"""`otseg check-data`: each kind of problem is caught and reported in one line with its fix; `otseg train` and
`otseg eval` run the same check at start-up; the training start-up notes (warm-up, batch, transductive init)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from fake_layouts import make_coco_stuff, make_voc, write_label

from conftest import tiny_train_args
from otseg.cli import main
from otseg.data.check import check_dataset, check_preset
from otseg.model.presets import get_preset


def _check(root: Path, capsys, preset: str = "voc12-inductive") -> tuple[int, list[str]]:
    rc = main(["check-data", "--preset", preset, "--data-root", str(root)])
    out = capsys.readouterr().out
    return rc, [ln.strip() for ln in out.splitlines()]


def _errors(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("error:")]


def test_a_good_tiny_layout_is_usable_and_counts_are_warnings(tmp_path, capsys):
    root = make_voc(tmp_path / "data")
    rc, lines = _check(root, capsys)
    assert rc == 0 and "usable" in lines
    assert "train: 10 images (official: 10,582)" in lines and "val: 3 images (official: 1,449)" in lines
    assert not _errors(lines)
    warnings = [ln for ln in lines if ln.startswith("warning:")]
    assert any("train has 10 images, the official set 10,582" in w for w in warnings)


def test_missing_folder(tmp_path, capsys):
    root = make_voc(tmp_path / "data")
    shutil.rmtree(root / "VOCdevkit" / "VOC2012" / "SegmentationClassAug")
    rc, lines = _check(root, capsys)
    errors = _errors(lines)
    assert rc == 1 and len(errors) == 1 and "NOT usable: 1 error(s)" in lines
    assert "missing folder" in errors[0] and "SegmentationClassAug" in errors[0]
    assert f"otseg prepare voc12 --src DOWNLOADS --data-root {root}" in errors[0]


def test_missing_list(tmp_path, capsys):
    root = make_voc(tmp_path / "data")
    (root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    rc, lines = _check(root, capsys)
    errors = _errors(lines)
    assert rc == 1 and len(errors) == 1 and "missing list" in errors[0] and "val.txt" in errors[0]


def test_unpaired_image(tmp_path, capsys):
    root = make_voc(tmp_path / "data")
    (root / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2008_000001.jpg").unlink()  # listed in val.txt
    rc, lines = _check(root, capsys)
    errors = _errors(lines)
    assert rc == 1 and len(errors) == 1 and "2008_000001.jpg" in errors[0] and "val" in errors[0]

    coco = make_coco_stuff(tmp_path / "coco")
    img = next((coco / "coco_stuff164k" / "images" / "val2017").glob("*.jpg"))
    img.unlink()  # its label is left without an image, and COCO's val lists none for it
    label_only = check_dataset("coco_stuff164k", coco)
    assert label_only.usable and any(img.stem in w and "no image" in w for w in label_only.warnings)
    (coco / "coco_stuff164k" / "annotations" / "train2017" / "000000000001_labelTrainIds.png").unlink()
    image_only = check_dataset("coco_stuff164k", coco)
    assert not image_only.usable and len(image_only.errors) == 1
    assert "000000000001_labelTrainIds.png" in image_only.errors[0]


def test_out_of_range_label(tmp_path, capsys):
    root = make_voc(tmp_path / "data")
    lab = np.zeros((64, 80), dtype=np.uint8)
    lab[:8, :8] = 33  # VOC raw ids stop at 20
    for stem in ("2008_000000", "2008_000001", "2008_000002"):  # every val label: whatever the sample picks
        write_label(root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{stem}.png", lab, palette=True)
    rc, lines = _check(root, capsys)
    errors = _errors(lines)
    assert rc == 1 and errors
    assert all("[32]" in e and "raw value" in e and "otseg prepare voc12" in e for e in errors)
    assert "val: 3 images (official: 1,449)" in lines


def test_cross_dataset_presets_check_only_the_target_val_split(tmp_path):
    root = make_voc(tmp_path / "data")
    shutil.rmtree(root / "VOCdevkit" / "VOC2012" / "SegmentationClassAug")  # only training needs it
    assert check_preset(get_preset("coco-to-voc12"), root).usable
    assert not check_preset(get_preset("voc12-inductive"), root).usable


# ------------------------------------------------------------------------------------------------ start-up
def test_train_and_eval_stop_at_start_up_on_a_broken_layout(tmp_path, capsys):
    root = make_voc(tmp_path / "data")
    (root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "trainaug.txt").unlink()
    rc = main(["train", *tiny_train_args("voc12-inductive", root, tmp_path / "wd", max_iters=2)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "trainaug.txt" in err and "otseg prepare voc12" in err
    assert not (tmp_path / "wd" / "iter_2.pt").exists()


def test_train_start_up_notes_warmup_batch_and_transductive_init(tmp_path, capsys):
    root = make_voc(tmp_path / "data")
    args = tiny_train_args("voc12-inductive", root, tmp_path / "wd", max_iters=2)
    args += ["--set", "train.warmup_iters=1500"]  # the preset's warm-up, longer than the run
    assert main(["train", *args]) == 0
    out = capsys.readouterr().out
    assert "warm-up lasts 1500 iterations but the run has 2" in out and "--set train.warmup_iters=N" in out
    assert "global batch 2 = 1 process x batch 2 x 1 accumulation step\n" in out
    # --set train.global_batch=2 (tiny_train_args): the linear lr rule is printed, not applied (the run's lr: 1e-3)
    assert (
        "the linear scaling rule would give lr 2.5e-05 (--set train.lr=2.5e-05); not applied: this run uses lr 0.001"
        in out
    )

    trans = tiny_train_args("voc12-transductive", root, tmp_path / "trans", max_iters=2)
    assert main(["train", *trans]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--init-from work_dirs/voc12-inductive/iter_10000.pt" in err and "half schedule" in err


def test_a_custom_image_that_pil_refuses_with_a_value_error_is_no_traceback(tmp_path, capsys):
    """A PNG whose zTXt chunk inflates to 20 MB: PIL raises ValueError (not OSError) when opening it."""
    import struct
    import zlib

    from fake_layouts import make_custom

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    root = make_custom(tmp_path / "data", n_train=2, n_val=1)
    text = chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(20 << 20), 9))
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + text + chunk(b"IDAT", zlib.compress(bytes(20)))
    (root / "train" / "images" / "train_000.jpg").write_bytes(bomb + chunk(b"IEND", b""))
    main(["check-data", "--dataset", "custom", "--data-root", str(root)])
    assert "Traceback" not in capsys.readouterr().err
