"""The web page's limits: upload size, class count, pixel cap; uploads removed after use; >255 classes; no
server paths in messages."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_model
from otseg.predictor import Predictor

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before anything imports gradio
gr = pytest.importorskip("gradio")

from otseg.web import build_app, launch, make_segment_fn  # noqa: E402  (gradio checked first)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(make_tiny_model())


def _png(path: Path, width: int = 80, height: int = 64) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _message(segment: Any, image: str | None, text: str) -> str:
    with pytest.raises(gr.Error) as info:
        segment(image, text)
    return info.value.message


def test_upload_is_removed_after_use_and_still_segments_again(predictor: Predictor, tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    upload = _png(uploads / "photo.png")
    segment = make_segment_fn(predictor, upload_dir=uploads)
    _, first = segment(str(upload), "sky, road")
    assert not upload.exists()  # read, then deleted from the server's disk
    _, again = segment(str(upload), "sky, road, tree")  # the same upload with other classes still works
    assert list(first) == ["sky", "road"] and list(again) == ["sky", "road", "tree"]
    elsewhere = _png(tmp_path / "mine.png")  # a file outside the upload folder is never deleted
    segment(str(elsewhere), "sky")
    assert elsewhere.exists()


def test_class_count_limit_and_more_than_255_classes(predictor: Predictor, tmp_path: Path) -> None:
    names = ", ".join(f"thing {i}" for i in range(300))
    limited = make_segment_fn(predictor, max_classes=10)
    message = _message(limited, str(_png(tmp_path / "a.png")), names)
    assert "300 class names given; this page takes at most 10" in message
    roomy = make_segment_fn(predictor, max_classes=300)
    overlay, fractions = roomy(str(_png(tmp_path / "b.png")), names)
    assert len(fractions) == 300 and sum(fractions.values()) == pytest.approx(1.0)
    assert overlay.width > 80


def test_pixel_cap_and_no_server_paths(predictor: Predictor, tmp_path: Path) -> None:
    segment = make_segment_fn(predictor, max_pixels=1000)
    message = _message(segment, str(_png(tmp_path / "big.png")), "sky")
    assert "80x64" in message and "over the limit" in message
    assert str(tmp_path) not in message and "/" not in message.split("OTSEG_MAX_PIXELS")[0]
    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((1, 2000), np.uint8)).save(strip)
    message = _message(make_segment_fn(predictor), str(strip), "sky")
    assert "2000x1" in message and str(tmp_path) not in message and "array" not in message


def test_oversized_upload_is_refused_by_the_server(predictor: Predictor, tmp_path: Path) -> None:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(predictor)
    _, url, _ = launch(app, port=port, prevent_thread_lock=True, quiet=True, max_upload_mb=0.01)
    try:
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(50_000))
        small = _png(tmp_path / "small.png", 8, 8)
        with httpx.Client(timeout=30) as client:
            refused = client.post(f"{url}gradio_api/upload", files={"files": big.open("rb")})
            accepted = client.post(f"{url}gradio_api/upload", files={"files": small.open("rb")})
        assert refused.status_code == 413, refused.text
        assert accepted.status_code == 200, accepted.text
    finally:
        app.close(verbose=False)


def test_served_page_removes_uploads_after_use(predictor: Predictor, tmp_path: Path) -> None:
    """Through the server: gradio stores the upload in its cache, the page reads it and deletes it; the same
    picture sent again (gradio names uploads by content: the same path) is segmented and deleted again."""
    from gradio_client import Client, handle_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(predictor)
    _, url, _ = launch(app, port=port, prevent_thread_lock=True, quiet=True)
    name = f"upload-{os.getpid()}-{port}.png"
    try:
        png = _png(tmp_path / name)
        client = Client(url, verbose=False)
        for _ in range(2):
            _, fractions = client.predict(handle_file(str(png)), "sky, road", api_name="/segment")
            assert {c["label"] for c in fractions["confidences"]} == {"sky", "road"}
        image_input = next(b for b in app.blocks.values() if isinstance(b, gr.Image) and b.interactive is not False)
        assert list(Path(image_input.GRADIO_CACHE).rglob(name)) == []
    finally:
        app.close(verbose=False)
