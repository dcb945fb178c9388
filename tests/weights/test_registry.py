"""`otseg weights`: the registry (data), identifying files without executing them, and resumable verified
downloads from a local HTTP server on 127.0.0.1 (nothing leaves the machine)."""

from __future__ import annotations

import hashlib
import http.server
import json
import pickle
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import REFERENCE_EMBEDDINGS
from otseg.cli import main
from otseg.weights.registry import file_digests, identify, load_registry


def test_registry_entries_are_valid_and_say_where_to_get_each(capsys):
    entries = load_registry()
    names = {e.name for e in entries}
    assert {"clip-vit-b-16", "voc12-embeddings", "voc12-inductive-checkpoint", "voc2012-trainval"} <= names
    clip = next(e for e in entries if e.name == "clip-vit-b-16")
    assert clip.sha256 is not None and f"/{clip.sha256}/ViT-B-16.pt" in (clip.url or "")  # the URL holds it
    for e in entries:
        assert e.url or e.page
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "drive.google.com/file/d/1UjyrFxQ0TTSDiQYse5MxAvHVyhJpqgMA" in out and "(in a browser; no direct URL)" in out
    assert "otseg weights fetch clip-vit-b-16 --to DIR" in out


@pytest.mark.parametrize("filename", ["voc12_otseg.npy", "context_otseg.npy", "coco_otseg.npy"])
def test_the_released_embeddings_are_recognised(filename, capsys):
    path = REFERENCE_EMBEDDINGS / filename
    if not path.is_file():
        pytest.skip(f"{path} not found (set OTSEG_REFERENCE_EMBEDDINGS)")
    result = identify(path)
    assert result.matched and result.entry is not None and result.entry.filename == filename
    assert result.entry.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert main(["weights", "verify", str(path), "--no-progress"]) == 0
    assert "size and sha256 match" in capsys.readouterr().out


def test_verify_says_why_a_file_is_not_a_known_one(tmp_path, capsys):
    src = REFERENCE_EMBEDDINGS / "voc12_otseg.npy"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    data = src.read_bytes()
    short = tmp_path / "voc12_otseg.npy"
    short.write_bytes(data[:-100])
    assert main(["weights", "verify", str(short), "--no-progress"]) == 1
    assert "wrong size" in capsys.readouterr().out

    flipped = tmp_path / "flipped" / "voc12_otseg.npy"
    flipped.parent.mkdir()
    flipped.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert main(["weights", "verify", str(flipped), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "wrong digest" in out and "(20, 6, 512)" in out  # the header is read (not pickle) to say what it is

    text = tmp_path / "ViT-B-16.pt"
    text.write_text("<html>Google Drive virus scan warning</html>")
    assert main(["weights", "verify", str(text), "--no-progress"]) == 1
    assert "not a CLIP archive" in capsys.readouterr().out

    ckpt = tmp_path / "voc_inductive.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
    assert main(["weights", "verify", str(ckpt), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "torch.save zip archive" in out and "no published checksum" in out


class _Boom:
    """Unpickling this would create a file: proof that verify never unpickles."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))


def test_verify_never_executes_the_file(tmp_path, capsys):
    marker = tmp_path / "executed.txt"
    fake = tmp_path / "ViT-B-16.pt"
    with zipfile.ZipFile(fake, "w") as zf:  # a TorchScript-shaped archive with a booby-trapped pickle
        zf.writestr("ViT-B-16/data.pkl", pickle.dumps(_Boom(str(marker))))
        zf.writestr("ViT-B-16/constants.pkl", pickle.dumps(_Boom(str(marker))))
        zf.writestr("ViT-B-16/code/__torch__/model.py", "raise SystemExit")
    assert main(["weights", "verify", str(fake), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "wrong digest" in out and "TorchScript archive" in out
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ fetch
class _RangeServer(http.server.HTTPServer):
    """The server `_RangeHandler` serves from: what it serves, where to cut, and the Range header of each request."""

    payload: bytes
    cut_after: int | None
    requests: list[str | None]


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `server.payload` at /file.bin with Range support; `server.cut_after` truncates one response."""

    def do_GET(self) -> None:
        srv = self.server
        assert isinstance(srv, _RangeServer)
        srv.requests.append(self.headers.get("Range"))
        data = srv.payload
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[len("bytes=") :].split("-")[0])
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:
            body, srv.cut_after = body[: srv.cut_after], None
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_RangeServer]:
    srv = _RangeServer(("127.0.0.1", 0), _RangeHandler)
    srv.timeout = 5
    srv.payload, srv.cut_after, srv.requests = b"", None, []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _registry(tmp_path: Path, url: str, payload: bytes, **extra) -> Path:
    digest = hashlib.sha256(payload).hexdigest()
    entry = {"name": "test-file", "kind": "embeddings", "filename": "file.bin", "url": url,
             "sha256": digest, "size": len(payload), "description": "a test file"}  # fmt: skip
    entry.update(extra)
    manual = {"name": "manual-file", "kind": "checkpoint", "page": "https://example.invalid/page", "description": "x"}
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"files": [entry, manual]}))
    return path


def test_fetch_resumes_with_range_verifies_and_is_atomic(tmp_path, server, capsys):
    payload = bytes(range(256)) * 4000  # about 1 MB
    server.payload = payload
    url = f"http://127.0.0.1:{server.server_address[1]}/file.bin"
    reg = _registry(tmp_path, url, payload)
    dest = tmp_path / "downloads"
    cmd = ["weights", "fetch", "test-file", "--to", str(dest), "--registry", str(reg), "--no-progress"]

    server.cut_after = 300_000  # the connection drops after 300 kB
    assert main(cmd) == 2
    assert "otseg weights: error:" in capsys.readouterr().err
    part = dest / ".file.bin.part"
    assert part.stat().st_size == 300_000 and not (dest / "file.bin").exists()  # never a half file under the name

    assert main(cmd) == 0  # resumed from byte 300,000
    assert server.requests == [None, "bytes=300000-"]
    assert (dest / "file.bin").read_bytes() == payload and not part.exists()
    assert "verified: sha256" in capsys.readouterr().out

    assert main(cmd) == 0 and len(server.requests) == 2  # already there and verified: no download


def test_fetch_refuses_a_wrong_digest_and_prints_manual_steps_without_url(tmp_path, server, capsys):
    server.payload = b"not what the registry describes" * 10
    url = f"http://127.0.0.1:{server.server_address[1]}/file.bin"
    reg = _registry(tmp_path, url, b"x" * len(server.payload))  # same size, other bytes
    dest = tmp_path / "downloads"
    assert main(["weights", "fetch", "test-file", "--to", str(dest), "--registry", str(reg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "removed" in err
    assert not any(dest.iterdir())

    assert main(["weights", "fetch", "manual-file", "--to", str(dest), "--registry", str(reg)]) == 1
    out = capsys.readouterr().out
    assert "no direct download URL" in out and "https://example.invalid/page" in out
    assert file_digests(reg)["sha256"] == hashlib.sha256(reg.read_bytes()).hexdigest()


def test_a_registry_with_an_integer_of_5000_digits_is_one_line(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text('{"files": [{"size": ' + "9" * 5000 + "}]}")  # Python's int parser refuses over 4,300 digits
    with pytest.raises(ValueError) as info:
        load_registry(path)
    assert str(path) in str(info.value) and "not valid JSON" in str(info.value) and "\n" not in str(info.value)
