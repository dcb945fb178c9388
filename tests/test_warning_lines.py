"""Warnings on the command line take one line each (`otseg.warning_lines`), PIL's included."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_model
from otseg.cli import _one_line, main
from otseg.model_files.otseg_folder import save_pretrained
from otseg.warning_lines import format_one_line, one_line_warnings


def _jpeg_with_truncated_exif(path: Path) -> Path:
    """A readable JPEG whose EXIF block promises more bytes than it has: PIL warns 'Truncated File Read'."""
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x010E, 2, 1000, 26) + struct.pack("<I", 0)
    exif = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    path.write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[2:])
    return path


def test_format_one_line() -> None:
    line = format_one_line("otseg x", "first line\n  second <_io.BytesIO object at 0x7f00aa> end", UserWarning)
    assert line == "otseg x: warning: first line second end (UserWarning)"


def test_one_line_warnings_restores_the_display(capsys: pytest.CaptureFixture[str]) -> None:
    before = warnings.showwarning
    with one_line_warnings("otseg t"):
        warnings.warn("two\nlines", RuntimeWarning, stacklevel=1)
    assert warnings.showwarning is before
    assert capsys.readouterr().err == "otseg t: warning: two lines (RuntimeWarning)\n"


def test_pils_warning_is_one_line_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    save_pretrained(make_tiny_model(seed=1), model)
    image = _jpeg_with_truncated_exif(tmp_path / "photo.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code = main(["segment", str(image), "--classes", "cat, sofa", "--checkpoint", str(model),
                     "--out", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "otseg segment: warning: Truncated File Read (UserWarning)" in err
    assert "warnings.warn" not in err and "TiffImagePlugin.py" not in err


def test_error_messages_lose_object_reprs() -> None:
    error = ValueError("cannot identify image file <_io.BytesIO object at 0x7f3a2b1c0d90>")
    assert _one_line(error) == "cannot identify image file"
