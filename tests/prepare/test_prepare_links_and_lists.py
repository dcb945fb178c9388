"""`otseg prepare` on extracted folders holding symbolic links, and on split lists holding paths: a link out of
the download is refused in one line (nothing of the machine comes into the data root), a link inside it gives a
regular file (never a link), and a list entry such as '../x' is refused naming the list and the entry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from official_downloads import make_sbd, make_voc2012

from otseg.cli import main

pytest.importorskip("scipy")


def _prepare(src: Path, root: Path) -> int:
    return main(["prepare", "voc12", "--src", str(src), "--data-root", str(root), "--no-progress", "--workers", "0"])


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("otseg prepare: error: ") and "Traceback" not in err, err
    return err


def _voc(tmp_path: Path) -> tuple[Path, dict]:
    src = tmp_path / "downloads"
    voc = make_voc2012(src, archive=False)
    make_sbd(src, voc, archive=False)
    return src, voc


def test_a_link_out_of_the_download_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, voc = _voc(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not an image of the dataset")
    image = src / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{voc['train'][1]}.jpg"
    image.unlink()
    image.symlink_to(secret)
    root = tmp_path / "data"
    assert _prepare(src, root) == 2
    err = _one_line(capsys)
    assert f"JPEGImages/{voc['train'][1]}.jpg is a symbolic link to {secret}" in err and "outside" in err
    copied = [p for p in root.rglob("*") if p.is_symlink() or (p.is_file() and p.read_bytes() == secret.read_bytes())]
    assert copied == []


def test_a_link_inside_the_download_gives_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, voc = _voc(tmp_path)
    images = src / "VOCdevkit" / "VOC2012" / "JPEGImages"
    keep = images.parent / "kept" / f"{voc['train'][1]}.jpg"  # the real file elsewhere in the download
    keep.parent.mkdir()
    os.replace(images / keep.name, keep)
    (images / keep.name).symlink_to(os.path.relpath(keep, images))  # a relative link, as tar would extract it
    root = tmp_path / "data"
    assert _prepare(src, root) == 0, capsys.readouterr().err
    out = root / "VOCdevkit" / "VOC2012" / "JPEGImages" / keep.name
    assert not out.is_symlink() and out.read_bytes() == keep.read_bytes()


@pytest.mark.parametrize("entry", ["../../../etc/passwd", "2007_000001/../../x", "/etc/passwd", ".."])
def test_a_list_entry_that_is_a_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: str) -> None:
    src, voc = _voc(tmp_path)
    listing = src / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    listing.write_text("".join(s + "\n" for s in voc["val"]) + entry + "\n")
    root = tmp_path / "data"
    assert _prepare(src, root) == 2
    err = _one_line(capsys)
    assert "ImageSets/Segmentation/val.txt: entry 4" in err and repr(entry) in err and "not a plain image stem" in err
    lists = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    assert not (lists / "val.txt").exists()
