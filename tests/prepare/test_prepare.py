"""`otseg prepare` on tiny inputs in each official format (archives and extracted folders): every output pixel
against the expected mapping, then two training iterations and an evaluation with the regular presets."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from official_downloads import make_ade20k, make_coco, make_context, make_sbd, make_voc2012
from PIL import Image

import otseg
from conftest import TINY_SEGMENTOR, golden_file, tiny_train_args
from otseg.cli import main
from otseg.data.datasets import build_dataset
from otseg.model_files.otseg_folder import save_pretrained
from otseg.prepare import common

pytest.importorskip("scipy")


def _prepare(dataset: str, src: Path, root: Path, *extra: str) -> int:
    return main(["prepare", dataset, "--src", str(src), "--data-root", str(root), "--no-progress", *extra])


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode in ("L", "P"), path
        return np.array(im)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative posix path -> bytes), the checksum cache excluded."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".otseg_prepare_checksums.json"
    }


def _train_and_eval(preset: str, root: Path, tmp_path: Path, capsys) -> dict:
    wd = tmp_path / f"run-{preset}"
    assert main(["train", *tiny_train_args(preset, root, wd, max_iters=2, log_interval=1)]) == 0
    out_json = tmp_path / f"eval-{preset}.json"
    assert main(["eval", "--checkpoint", str(wd / "iter_2.pt"), "--data-root", str(root), "--out", str(out_json)]) == 0
    capsys.readouterr()
    return json.loads(out_json.read_text())


# ------------------------------------------------------------------------------------------------ voc12
@pytest.mark.parametrize("archive", [True, False], ids=["archives", "folders"])
def test_voc12_every_pixel_then_trains_and_evaluates(archive, tmp_path, capsys):
    src, root = tmp_path / "downloads", tmp_path / "data"
    voc = make_voc2012(src, archive)
    sbd = make_sbd(src, voc, archive)
    workers = "2" if archive else "0"  # the pool once, in-process once
    assert _prepare("voc12", src, root, "--skip-checksum", "--workers", workers) == 0
    out = capsys.readouterr().out
    n_aug = len(sbd["aug"])
    assert f"train = 4 (train.txt) + {n_aug} (trainaug.txt) = {4 + n_aug} images (official: 10,582)" in out

    base = root / "VOCdevkit" / "VOC2012"
    lists = base / "ImageSets" / "Segmentation"
    assert (lists / "trainaug.txt").read_text().split() == sbd["aug"] == (lists / "aug.txt").read_text().split()
    # VOC val images are excluded from the aug list even though SBD lists one of them; VOC train ones too.
    assert not set(sbd["aug"]) & set(voc["val"] + voc["train"]) and set(voc["others"]) == set(sbd["aug"])
    for stem, seg in sbd["masks"].items():  # every SBD mask, every pixel: the same class ids
        assert np.array_equal(_read(base / "SegmentationClassAug" / f"{stem}.png"), seg), stem
    for stem, lab in voc["masks"].items():  # VOC's palette masks: copied unchanged (indices, 255 outlines)
        assert np.array_equal(_read(base / "SegmentationClass" / f"{stem}.png"), lab), stem
    for rel, data in voc["files"].items():
        if "/JPEGImages/" in rel:
            assert (root / rel).read_bytes() == data
    assert not (base / "Annotations").exists()
    assert (lists / "train.txt").read_text().split() == voc["train"]

    assert main(["check-data", "--preset", "voc12-inductive", "--data-root", str(root)]) == 0
    assert "usable" in capsys.readouterr().out
    if archive:
        result = _train_and_eval("voc12-inductive", root, tmp_path, capsys)
        assert result["num_images"] == 3 and len(result["per_class_iou"]) == 20


# ------------------------------------------------------------------------------------------------ context59
@pytest.mark.parametrize("archive", [True, False], ids=["archive", "folder"])
def test_context59_every_pixel_then_trains_and_evaluates(archive, tmp_path, capsys):
    src, root = tmp_path / "downloads", tmp_path / "data"
    ctx = make_context(src, archive)
    assert _prepare("context59", src, root, "--skip-checksum", "--workers", "0") == 0
    assert "train 4, val 3" in capsys.readouterr().out
    base = root / "VOCdevkit" / "VOC2010"
    for stem, expected in ctx["masks"].items():
        assert np.array_equal(_read(base / "SegmentationClassContext" / f"{stem}.png"), expected), stem
    lists = base / "ImageSets" / "SegmentationContext"
    assert (lists / "train.txt").read_text().split() == ctx["train"]
    assert (lists / "val.txt").read_text().split() == ctx["val"]
    # Only the images the JSON lists for train/val are copied (not the test one, not the unlisted one).
    assert sorted(p.stem for p in (base / "JPEGImages").iterdir()) == sorted(ctx["train"] + ctx["val"])
    if not archive:
        result = _train_and_eval("context59-inductive", root, tmp_path, capsys)
        assert result["num_images"] == 3 and len(result["per_class_iou"]) == 59


# ------------------------------------------------------------------------------------------------ coco
@pytest.mark.parametrize("archive", [True, False], ids=["zips", "folders"])
def test_coco_every_pixel_then_trains_and_evaluates(archive, tmp_path, capsys):
    src, root = tmp_path / "downloads", tmp_path / "data"
    coco = make_coco(src, archive)
    assert _prepare("coco", src, root, "--skip-checksum", "--workers", "0") == 0
    assert "train2017 4 images / 4 label maps" in capsys.readouterr().out
    # The mapping, written out: values 0..181 minus the 11 unused thing ids, in order, become 0..170.
    unused = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
    expected_lut = np.full(256, 255)
    expected_lut[[v for v in range(182) if v not in unused]] = np.arange(171)
    assert expected_lut[10] == 10 and expected_lut[12] == 11 and expected_lut[181] == 170 and expected_lut[11] == 255
    base = root / "coco_stuff164k"
    for (split, stem), raw in coco["raw"].items():
        got = _read(base / "annotations" / split / f"{stem}_labelTrainIds.png")
        assert np.array_equal(got, expected_lut[raw]), (split, stem)
        assert (base / "images" / split / f"{stem}.jpg").is_file()
    if archive:
        result = _train_and_eval("coco-inductive", root, tmp_path, capsys)
        assert result["num_images"] == 3 and len(result["per_class_iou"]) == 171


# ------------------------------------------------------------------------------------------------ ade20k
def test_ade20k_copied_unchanged_and_read_by_the_cross_dataset_preset(tmp_path, capsys):

    src, root = tmp_path / "downloads", tmp_path / "data"
    ade = make_ade20k(src, archive=True)
    assert _prepare("ade20k", src, root, "--skip-checksum") == 0
    assert "training 3 images / 3 annotations" in capsys.readouterr().out
    for rel, data in ade["files"].items():
        assert (root / rel).read_bytes() == data, rel
    assert main(["check-data", "--preset", "coco-to-ade20k", "--data-root", str(root)]) == 0
    val = build_dataset("ade20k", root, "val")
    assert len(val) == 2
    for i in range(len(val)):  # reduce_zero_label: 0 -> 255, c -> c - 1
        stem = Path(val.samples[i][0]).stem
        raw = ade["labels"][("validation", stem)].astype(np.int64)
        assert np.array_equal(val.load_label(i), np.where(raw == 0, 255, raw - 1))

    # ADE20K is only a cross-dataset target: a tiny coco-to-ade20k model (the 150 names embedded by the golden
    # tiny CLIP's text tower) is scored on it by otseg eval.
    tiny = {**TINY_SEGMENTOR, "vision.heads": 1}
    model = otseg.build_model("coco-to-ade20k", clip=golden_file("openai_clip_jit.pt"), **tiny)
    model.set_classes(model.class_names)
    save_pretrained(model, tmp_path / "tiny-coco-to-ade20k")
    out_json = tmp_path / "ade-eval.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "tiny-coco-to-ade20k"), "--data-root", str(root),
                 "--out", str(out_json)]) == 0  # fmt: skip
    result = json.loads(out_json.read_text())
    assert result["num_images"] == 2 and len(result["per_class_iou"]) == 150


def test_ade20k_release_packed_inside_another_zip_is_refused_in_one_line(tmp_path, capsys):
    src, root = tmp_path / "downloads", tmp_path / "data"
    make_ade20k(src, archive=True)
    release = src / "ADEChallengeData2016.zip"
    inner = release.read_bytes()
    with zipfile.ZipFile(release, "w") as outer:  # the real release, as one member of a zip of the same name
        outer.writestr("ADEChallengeData2016.zip", inner)
    assert _prepare("ade20k", src, root, "--skip-checksum") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ADEChallengeData2016.zip" in err and "no image or annotation" in err


# ------------------------------------------------------------------------------------------------ resume
def test_interrupted_prepare_then_rerun_gives_the_same_files_as_one_run(tmp_path, monkeypatch, capsys):

    src = tmp_path / "downloads"
    voc = make_voc2012(src, archive=True)
    make_sbd(src, voc, archive=True)
    once, twice = tmp_path / "once", tmp_path / "twice"
    assert _prepare("voc12", src, once, "--skip-checksum", "--workers", "0") == 0

    calls = {"n": 0}
    original = common._run

    def interrupted(job):
        calls["n"] += 1
        if calls["n"] == 12:  # mid-way through the VOC files: as if Ctrl+C hit during the 12th write
            job.dest.parent.mkdir(parents=True, exist_ok=True)
            job.dest.with_name(f".{job.dest.name}.999.tmp").write_bytes(b"half a PNG")  # a kill mid-write
            raise KeyboardInterrupt
        return original(job)

    with monkeypatch.context() as m:
        m.setattr(common, "_run", interrupted)
        assert _prepare("voc12", src, twice, "--skip-checksum", "--workers", "0") == 130
    partial = _tree(twice)
    reference = _tree(once)
    # Whatever exists under a final name after the interruption is complete (byte-identical to the clean run).
    finals = {k: v for k, v in partial.items() if not k.rsplit("/", 1)[-1].startswith(".")}
    assert 0 < len(finals) < len(reference)
    assert all(reference[k] == v for k, v in finals.items())
    assert any(k.endswith(".999.tmp") for k in partial)

    capsys.readouterr()
    assert _prepare("voc12", src, twice, "--skip-checksum", "--workers", "0") == 0
    assert _tree(twice) == reference  # the stale temporary is gone, nothing differs
    before = {p: p.stat().st_mtime_ns for p in twice.rglob("*.png")}
    assert _prepare("voc12", src, twice, "--skip-checksum", "--workers", "0") == 0  # idempotent: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in twice.rglob("*.png")} == before


# ------------------------------------------------------------------------------------------------ bad inputs
def test_missing_download_is_one_line_naming_it_and_where_it_is_published(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _prepare("voc12", tmp_path / "empty", tmp_path / "data") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "VOCtrainval_11-May-2012.tar" in err and "https://host.robots.ox.ac.uk/pascal/VOC/voc2012/" in err

    make_voc2012(tmp_path / "only_voc", archive=True)
    assert _prepare("voc12", tmp_path / "only_voc", tmp_path / "data", "--skip-checksum") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "benchmark.tgz" in err and "semantic_contours/benchmark.tgz" in err


def test_archive_with_the_wrong_checksum_is_refused(tmp_path, capsys):
    src = tmp_path / "downloads"
    voc = make_voc2012(src, archive=True)
    make_sbd(src, voc, archive=True)
    assert _prepare("voc12", src, tmp_path / "data") == 2  # our tiny tar is not the published one
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "md5" in err and "6cd6e144f989b92b3379bac3b3de84fd" in err and "--skip-checksum" in err
    assert not (tmp_path / "data" / "VOCdevkit").exists()


def test_corrupt_mat_file_names_the_file(tmp_path, capsys):
    src = tmp_path / "downloads"
    voc = make_voc2012(src, archive=False)
    make_sbd(src, voc, archive=False)
    bad = src / "benchmark_RELEASE" / "dataset" / "cls" / f"{voc['others'][0]}.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file, but truncated")
    assert _prepare("voc12", src, tmp_path / "data", "--workers", "0") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{voc['others'][0]}.mat" in err and "GTcls" in err


def test_downloads_extracted_in_place_and_src_as_the_folder_itself(tmp_path, capsys):
    # The archives extracted straight into the data root: prepare there, in place, and it converts what is missing.
    root = tmp_path / "data"
    voc = make_voc2012(root, archive=False)
    sbd = make_sbd(root, voc, archive=False)
    image = root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{voc['train'][0]}.jpg"
    before = image.read_bytes()
    assert _prepare("voc12", root, root, "--workers", "0") == 0
    assert image.read_bytes() == before
    lists = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    assert (lists / "trainaug.txt").read_text().split() == sbd["aug"]
    assert main(["check-data", "--preset", "voc12-inductive", "--data-root", str(root)]) == 0

    # --src may also be the extracted ADE20K folder itself.
    ade_src = tmp_path / "ade"
    make_ade20k(ade_src, archive=False)
    assert _prepare("ade20k", ade_src / "ADEChallengeData2016", tmp_path / "ade-out") == 0
    assert "training 3 images / 3 annotations" in capsys.readouterr().out


def test_a_damaged_archive_is_one_line(tmp_path, capsys):
    src = tmp_path / "downloads"
    voc = make_voc2012(src, archive=True)
    make_sbd(src, voc, archive=True)
    tar = src / "benchmark.tgz"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # a download cut in the middle
    assert _prepare("voc12", src, tmp_path / "data", "--skip-checksum", "--workers", "0") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "benchmark.tgz" in err and "download it again" in err
