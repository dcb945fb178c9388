"""The web page (src/otseg/web.py) against hostile and careless uploads, through gradio's own handlers and a
served page on 127.0.0.1: refused uploads (not an image, over the pixel cap, a bomb, a bad class list) leave
the server's disk; the cache stays under its byte cap; messages are one line without server paths or object
reprs; an over-cap image is called too large, not corrupt."""

from __future__ import annotations

import os
import socket
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_model
from otseg.predictor import Predictor

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before anything imports gradio
gr = pytest.importorskip("gradio")

from gradio.data_classes import ImageData  # noqa: E402  (gradio checked first)

from otseg.web import ELEM_IDS, build_app, launch, make_segment_fn  # noqa: E402
from otseg.web_budget import CacheBudget  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting.*"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated.*"),
]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(make_tiny_model())


def _png(path: Path, width: int = 80, height: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _bomb(path: Path, side: int = 30_000) -> Path:
    """A 100-byte PNG whose header declares side x side pixels (PIL calls it a decompression bomb)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    return path


def _error(fn: Any, *args: Any) -> str:
    with pytest.raises(gr.Error) as info:
        fn(*args)
    message = info.value.message
    assert "\n" not in message and "object at 0x" not in message and "Traceback" not in message
    return message


def _image_input(app: Any) -> Any:
    return next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == ELEM_IDS["image"])


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A gradio cache folder of the test's own (gradio reads $GRADIO_TEMP_DIR when a page is built)."""
    folder = tmp_path / "gradio-cache"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


# ------------------------------------------------------------------------------------------------ handlers
def test_refused_uploads_leave_the_servers_disk(predictor: Predictor, cache_dir: Path, tmp_path: Path) -> None:
    app = build_app(predictor, max_pixels=10_000)
    image_input = _image_input(app)
    assert Path(image_input.GRADIO_CACHE) == cache_dir
    corrupt = cache_dir / "h1" / "notes.png"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"this is not a picture")
    big = _png(cache_dir / "h2" / "big.png", 200, 100)
    bomb = _bomb(cache_dir / "h3" / "bomb.png")
    for path, said, title in (
        (corrupt, "The uploaded file notes.png is not an image that can be read", "Unreadable image"),
        (big, "The uploaded image big.png is 200x100 = 20,000 pixels, over the limit of 10,000", "Image too large"),
        (bomb, "The uploaded image bomb.png has more than", "Image too large"),
    ):
        with pytest.raises(gr.Error) as info:
            image_input.preprocess(ImageData(path=str(path), orig_name=path.name))
        assert info.value.message.startswith(said) and info.value.title == title, info.value.message
        assert "corrupt" not in info.value.message or title == "Unreadable image"
        assert str(cache_dir) not in info.value.message
        assert not path.exists(), path
    outside = _png(tmp_path / "mine" / "big.png", 200, 100)  # a file not in the cache is never deleted
    with pytest.raises(gr.Error):
        image_input.preprocess(ImageData(path=str(outside), orig_name="big.png"))
    assert outside.exists()
    with pytest.raises(gr.Error, match="Send the image as a file upload"):
        image_input.preprocess(ImageData(url="data:image/png;base64,AAAA", orig_name="x.png"))


def test_the_segment_function_deletes_refused_uploads_and_remembers_read_ones(
    predictor: Predictor, tmp_path: Path
) -> None:
    uploads = tmp_path / "uploads"
    segment = make_segment_fn(predictor, max_pixels=10_000, upload_dir=uploads)
    corrupt = uploads / "a" / "notes.png"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    message = _error(segment, str(corrupt), "sky, road")
    assert message.startswith("The uploaded file notes.png is not an image") and not corrupt.exists()
    big = _png(uploads / "b" / "big.png", 200, 100)
    message = _error(segment, str(big), "sky, road")
    assert message.startswith("The uploaded image big.png is 200x100") and "Image the" not in message
    assert "OTSEG_MAX_PIXELS" not in message and not big.exists()
    bomb = _bomb(uploads / "c" / "bomb.png")
    assert "has more than" in _error(segment, str(bomb), "sky") and not bomb.exists()
    # A bad class list: the upload has been read (and deleted); the fixed names need no new upload.
    photo = _png(uploads / "d" / "photo.png")
    message = _error(segment, str(photo), "sky; road")
    assert "separates names with ';'" in message and "'sky, road'" in message and not photo.exists()
    _, fractions = segment(str(photo), "sky, road")
    assert list(fractions) == ["sky", "road"]


def test_a_single_class_is_noted_on_the_page(predictor: Predictor, tmp_path: Path) -> None:
    segment = make_segment_fn(predictor)
    with pytest.warns(UserWarning, match="Only one class"):
        _, fractions = segment(str(_png(tmp_path / "a.png")), "sky")
    assert fractions == {"sky": 1.0}


# ------------------------------------------------------------------------------------------------ served
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_many_uploads_keep_the_cache_under_its_cap(predictor: Predictor, cache_dir: Path) -> None:
    """30 uploads of 45 kB, eight at a time, against a 50 kB upload cap and a 200 kB cache: all accepted (the
    oldest evicted), the cache never ends above its cap; an upload over the cap is refused with 413."""
    import httpx

    app = build_app(predictor)
    _, url, _ = launch(app, port=_free_port(), prevent_thread_lock=True, quiet=True, max_upload_mb=0.05,
                       max_cache_mb=0.2)  # fmt: skip
    try:
        payloads = [os.urandom(45_000) for _ in range(30)]

        def upload(data: bytes) -> int:
            with httpx.Client(timeout=30) as client:
                return client.post(f"{url}gradio_api/upload", files={"files": ("x.bin", data)}).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(upload, payloads))
        assert statuses.count(200) == 30, statuses
        assert CacheBudget(cache_dir, 1).used_bytes() <= int(0.2 * 1024 * 1024)
        assert upload(os.urandom(60_000)) == 413
    finally:
        app.close(verbose=False)


def test_a_cache_smaller_than_one_upload_is_refused(predictor: Predictor, cache_dir: Path) -> None:
    app = build_app(predictor)
    with pytest.raises(ValueError, match="smaller than --max-upload-mb"):
        launch(app, port=_free_port(), prevent_thread_lock=True, quiet=True, max_upload_mb=20, max_cache_mb=5)


def test_otseg_serve_uses_a_private_cache_folder_and_removes_it(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from otseg import web
    from otseg.cli import model_options
    from otseg.cli import serve as serve_command

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    monkeypatch.setattr(model_options, "predictor_from_args", lambda args: predictor)
    seen: list[str] = []

    def fake_serve(args: argparse.Namespace, served: Predictor) -> int:
        folder = os.environ["GRADIO_TEMP_DIR"]
        assert Path(folder).is_dir() and (Path(folder).stat().st_mode & 0o777) == 0o700
        assert Path(_image_input(web.build_app(served)).GRADIO_CACHE) == Path(folder)
        seen.append(folder)
        return 0

    monkeypatch.setattr(serve_command, "_serve", fake_serve)
    parser = argparse.ArgumentParser(prog="otseg")
    serve_command.add_parser(parser.add_subparsers(dest="command", required=True))
    assert serve_command.run(parser.parse_args(["serve"])) == 0
    assert len(seen) == 1 and not Path(seen[0]).exists() and "GRADIO_TEMP_DIR" not in os.environ
    with pytest.raises(ValueError, match="--max-cache-mb 5 is smaller than --max-upload-mb 20"):
        serve_command.run(parser.parse_args(["serve", "--max-cache-mb", "5"]))
