"""Bounded memory and time for any image: pixel cap, decompression bombs, extreme aspect ratios, label maps
built a band of rows at a time."""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import otseg.model.labels as labels_module
from conftest import make_tiny_model
from otseg import Predictor
from otseg.cli import main
from otseg.image_io import max_pixels, read_image
from otseg.model.labels import upsampled_argmax
from otseg.model_files.otseg_folder import save_pretrained


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_header(path: Path, width: int, height: int) -> None:
    """A tiny grayscale PNG whose header declares width x height (its pixel data is far too short: a decoder
    that trusted the header would allocate width x height bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-model")
    save_pretrained(make_tiny_model(seed=1), d)
    return d


@pytest.mark.parametrize("side", [13000, 20000])  # under and over PIL's own bomb limit (179 M pixels)
def test_pixel_cap_refuses_from_the_header(tmp_path, side):
    path = tmp_path / "bomb.png"
    write_png_header(path, side, side)
    assert path.stat().st_size < 2000
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"bomb\.png") as info:
        read_image(path)
    assert time.perf_counter() - start < 1.0
    assert "\n" not in str(info.value)


def test_pixel_cap_is_overridable(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match=r"wide\.png is 40x30 = 0\.0 million pixels, over the limit.*OTSEG_MAX_PIXELS"):
        read_image(path, max_pixels=1000)
    monkeypatch.setenv("OTSEG_MAX_PIXELS", "1000")
    assert max_pixels() == 1000
    with pytest.raises(ValueError, match=r"over the limit"):
        read_image(np.zeros((30, 40, 3), np.uint8))
    monkeypatch.setenv("OTSEG_MAX_PIXELS", "2000")
    assert read_image(path).shape == (30, 40, 3)
    monkeypatch.setenv("OTSEG_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match=r"OTSEG_MAX_PIXELS='lots'"):
        read_image(path)


def test_segment_skips_bombs_and_writes_the_rest(model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / "ok.png")
    write_png_header(folder / "bomb.png", 13000, 13000)
    write_png_header(folder / "huge.png", 20000, 20000)
    Image.fromarray(np.zeros((1, 2000), np.uint8)).save(folder / "strip.png")  # 87 bytes; 2400 windows if taken
    out = tmp_path / "out"
    start = time.perf_counter()
    code = main(["segment", str(folder), "--classes", "cat,sofa", "--checkpoint", str(model_dir), "--out", str(out),
                 "--no-progress"])  # fmt: skip
    assert time.perf_counter() - start < 60
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(r["image"]).name for r in summary["images"]] == ["ok.png"]
    failed = {Path(r["image"]).name: r["error"] for r in summary["failed"]}
    assert set(failed) == {"bomb.png", "huge.png", "strip.png"}
    assert "13000x13000" in failed["bomb.png"] and "over the limit" in failed["bomb.png"]
    assert "2000x1" in failed["strip.png"]
    assert (out / "ok_labels.png").is_file()
    assert "Traceback" not in capsys.readouterr().err


def test_score_names_a_bomb_in_one_line(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    write_png_header(tmp_path / "gt" / "a.png", 20000, 20000)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "pred" / "a.png")
    code = main(["score", "--preset", "voc12-inductive", "--pred", str(tmp_path / "pred"), "--gt",
                 str(tmp_path / "gt"), "--out", str(tmp_path / "s.json")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "a.png" in err and len(err.strip().splitlines()) == 1


def test_label_maps_are_built_a_few_channels_at_a_time(monkeypatch):

    calls = []
    interpolate = F.interpolate

    def spy(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return interpolate(x, *args, **kwargs)

    monkeypatch.setattr(labels_module, "_CHUNK_ELEMENTS", 2 * 40 * 50)
    monkeypatch.setattr(labels_module.F, "interpolate", spy)
    low = torch.rand(5, 9, 13)
    low[3] = low[1]  # a tie: the lower index wins, as argmax
    labels = upsampled_argmax(low, (40, 50))
    assert calls and all(shape[1] <= 2 for shape in calls)  # never the 5 channels at once
    reference = interpolate(low[None], size=(40, 50), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(labels, reference)  # bit for bit the full resize's argmax


def test_predict_leaves_the_model_unchanged():
    model = make_tiny_model()
    before_names, before = list(model.class_names), model.class_embeddings.clone()
    result = Predictor(model).predict(np.zeros((64, 64, 3), np.uint8), ["cat", "sofa"])
    assert result.class_names == ["cat", "sofa"] and result.scores.shape == (2, 64, 64)
    assert model.class_names == before_names
    assert torch.equal(model.class_embeddings, before)


def _ico_holding_png(width: int, height: int) -> bytes:
    """An ICO whose directory declares one 16x16 icon, stored as a PNG of width x height (PIL decodes the PNG at
    its own size: the header check would see 16x16)."""
    rows = zlib.compress(b"\x00" * (width + 1) * height, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + png


def test_formats_whose_header_cannot_bound_them_are_not_opened(tmp_path, monkeypatch):
    icon = tmp_path / "icon.png"  # the suffix does not matter: the content is what PIL would open
    icon.write_bytes(_ico_holding_png(2000, 2000))
    monkeypatch.setenv("OTSEG_MAX_PIXELS", "1000000")
    with pytest.raises(ValueError, match=r"icon\.png is not an image file otseg reads") as info:
        read_image(icon)
    assert "\n" not in str(info.value)


def test_a_png_text_chunk_bomb_is_one_line_naming_the_file(tmp_path):
    """A zTXt chunk inflating to 20 MB: PIL refuses it with a ValueError that names no file."""
    path = tmp_path / "text.png"
    ztxt = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * (20 << 20), 9))
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)
    idat = _chunk(b"IDAT", zlib.compress(b"\x00" * 20))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + ztxt + idat + _chunk(b"IEND", b""))
    with pytest.raises(ValueError, match=r"text\.png is corrupt or truncated: Decompressed data too large") as info:
        read_image(path)
    assert "\n" not in str(info.value)


def test_16_bit_and_float_pixels_are_converted_a_strip_at_a_time(monkeypatch):
    """Grey 16-bit pixels were repeated over three channels and then made float64 twice (54 bytes a pixel): an
    8000x8000 16-bit PNG ran out of memory where an 8-bit one of the same size segments."""
    import tracemalloc

    import otseg.image_io as image_io

    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65536, (1000, 1000), dtype=np.uint16)
    floats = rng.random((1000, 1000), dtype=np.float32)
    expected16 = np.repeat(np.rint(grey16.astype(np.float64) / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    expected_f = np.repeat(np.clip(np.rint(floats.astype(np.float64) * 255), 0, 255).astype(np.uint8)[..., None], 3, 2)
    monkeypatch.setattr(image_io, "_STRIP_PIXELS", 50_000)
    for values, expected in ((grey16, expected16), (floats, expected_f)):
        tracemalloc.start()
        try:
            rgb = image_io.to_rgb_array(values)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert rgb.dtype == np.uint8 and (rgb == expected).all()
        assert peak < 3 * values.size + (4 << 20), peak  # the output and a strip (before: ~50 MB)
