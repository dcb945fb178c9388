"""`otseg weights fetch` against hostile and broken servers (local, on 127.0.0.1): a link planted at the part
file, trickled bodies and headers, bodies larger than the file can be, a lying 206, garbage status lines, huge
or too many headers, redirects off https. Each ends in one line (exit 2 from the CLI), nothing is written
through a link, and no download writes more than its cap."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from otseg.cli import main
from otseg.weights.fetch import _NoDowngradeRedirects, fetch
from otseg.weights.registry import RegistryEntry, load_registry

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes

Handler = Callable[[socket.socket, bytes], None]


class RawServer:
    """Accepts connections on 127.0.0.1 and hands each (socket, request head) to `handler`; records the heads."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/file.bin"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
                self.requests.append(head)
                self.handler(conn, head)
            except OSError:
                pass  # the client went away (as it should, when it gives up)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Handler) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _range_start(head: bytes) -> int:
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("range: bytes="):
            return int(line.split("=", 1)[1].split("-")[0])
    return 0


def _honest(conn: socket.socket, head: bytes) -> None:
    start = _range_start(head)
    body = PAYLOAD[start:]
    status = "206 Partial Content" if start else "200 OK"
    extra = f"Content-Range: bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}\r\n" if start else ""
    conn.sendall(
        f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n".encode() + body
    )


def _entry(url: str, *, size: bool = True, digest: bool = True, **extra: object) -> RegistryEntry:
    fields: dict = {"name": "test-file", "kind": "embeddings", "filename": "file.bin", "url": url, "description": "x"}
    if size:
        fields["size"] = len(PAYLOAD)
    if digest:
        fields["sha256"] = hashlib.sha256(PAYLOAD).hexdigest()
    fields.update(extra)
    return RegistryEntry(**fields)


def _registry(tmp_path: Path, entry: RegistryEntry) -> Path:
    fields = {k: v for k, v in vars(entry).items() if v is not None}
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"files": [fields]}))
    return path


def _cli_error(tmp_path: Path, entry: RegistryEntry, capsys: pytest.CaptureFixture[str]) -> str:
    reg = _registry(tmp_path, entry)
    code = main(
        ["weights", "fetch", "test-file", "--to", str(tmp_path / "dl"), "--registry", str(reg), "--no-progress"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("otseg weights: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------------ links
def test_a_link_planted_at_the_part_file_is_never_written_through(tmp_path: Path, serve, capsys) -> None:
    server = serve(_honest)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / ".file.bin.part").symlink_to(victim)
    line = _cli_error(tmp_path, _entry(server.url), capsys)
    assert ".file.bin.part is a symbolic link" in line and "remove it" in line
    assert victim.read_text() == "precious" and server.requests == []
    # A link to a file that does not exist yet (O_CREAT would create the target): the same.
    (dest / ".file.bin.part").unlink()
    (dest / ".file.bin.part").symlink_to(tmp_path / "created-through-link")
    _cli_error(tmp_path, _entry(server.url), capsys)
    assert not (tmp_path / "created-through-link").exists()


def test_a_fifo_at_the_part_file_is_refused(tmp_path: Path, serve, capsys) -> None:
    server = serve(_honest)
    dest = tmp_path / "dl"
    dest.mkdir()
    import os

    os.mkfifo(dest / ".file.bin.part")
    line = _cli_error(tmp_path, _entry(server.url), capsys)
    assert "not a regular file" in line


# ------------------------------------------------------------------------------------------------ time
def test_a_trickled_body_meets_the_deadline_and_keeps_the_part(tmp_path: Path, serve) -> None:
    def trickle(conn: socket.socket, head: bytes) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(PAYLOAD)}\r\n\r\n".encode())
        for b in PAYLOAD:
            conn.sendall(bytes([b]))
            time.sleep(0.05)

    server = serve(trickle)
    start = time.monotonic()
    with pytest.raises(OSError, match=r"not finished within the deadline of 1 s .*run the command again to resume"):
        fetch(_entry(server.url), tmp_path, progress=False, deadline_s=1.0)
    assert time.monotonic() - start < 5
    assert 0 < (tmp_path / ".file.bin.part").stat().st_size < 100


def test_a_trickled_status_line_and_headers_meet_the_deadline(tmp_path: Path, serve) -> None:
    def slow_headers(conn: socket.socket, head: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for _ in range(10_000):
            conn.sendall(b"X")  # one endless header line, a byte at a time
            time.sleep(0.05)

    server = serve(slow_headers)
    start = time.monotonic()
    with pytest.raises(OSError, match="not finished within the deadline"):
        fetch(_entry(server.url), tmp_path, progress=False, deadline_s=1.0, timeout_s=30)
    assert time.monotonic() - start < 5


def test_a_server_slower_than_the_minimum_rate_is_left(tmp_path: Path, serve) -> None:
    def slow(conn: socket.socket, head: bytes) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(PAYLOAD)}\r\n\r\n".encode())
        for i in range(0, len(PAYLOAD), 10):
            conn.sendall(PAYLOAD[i : i + 10])
            time.sleep(0.05)

    server = serve(slow)
    with pytest.raises(OSError, match=r"the server sends \d+ bytes/s, less than 1,000 .*resume"):
        fetch(_entry(server.url), tmp_path, progress=False, min_rate=1000, rate_window_s=0.5)


# ------------------------------------------------------------------------------------------------ size
def test_a_body_larger_than_the_cap_is_stopped_when_no_size_is_known(tmp_path: Path, serve) -> None:
    sent = {"bytes": 0}

    def endless(conn: socket.socket, head: bytes) -> None:  # no Content-Length: the body ends when it closes
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for _ in range(2000):
            conn.sendall(b"\0" * 65536)
            sent["bytes"] += 65536

    server = serve(endless)
    entry = _entry(server.url, size=False, max_size=300_000)
    with pytest.raises(ValueError, match="sent more than the 300,000 bytes the file can have; stopped and removed"):
        fetch(entry, tmp_path, progress=False)
    assert not (tmp_path / ".file.bin.part").exists() and not (tmp_path / "file.bin").exists()
    with pytest.raises(ValueError, match="sent more than the 100,000 bytes"):
        fetch(_entry(server.url, size=False), tmp_path, progress=False, max_bytes=100_000)


def test_an_announced_body_larger_than_the_cap_is_not_downloaded(tmp_path: Path, serve) -> None:
    def big(conn: socket.socket, head: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000000\r\n\r\n" + b"\0" * 1000)

    server = serve(big)
    with pytest.raises(ValueError, match=r"announces 5,000,000,000 bytes, more than the expected 300,000"):
        fetch(_entry(server.url, size=False, max_size=300_000), tmp_path, progress=False)
    assert not (tmp_path / ".file.bin.part").exists()


def test_every_packaged_entry_has_a_cap_and_https() -> None:
    for entry in load_registry():
        if entry.url is not None:
            assert entry.url.startswith("https://"), entry.name
            assert entry.size is not None or entry.max_size is not None, entry.name


# ------------------------------------------------------------------------------------------------ resume
def test_a_lying_206_discards_the_part_says_so_and_starts_over(tmp_path: Path, serve) -> None:
    def lying(conn: socket.socket, head: bytes) -> None:
        if _range_start(head):  # "206", but the whole file from byte 0
            conn.sendall(
                f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-{len(PAYLOAD) - 1}/{len(PAYLOAD)}\r\n"
                f"Content-Length: {len(PAYLOAD)}\r\n\r\n".encode()
                + PAYLOAD
            )
        else:
            _honest(conn, head)

    server = serve(lying)
    (tmp_path / ".file.bin.part").write_bytes(PAYLOAD[:30_000])
    said: list[str] = []
    path = fetch(_entry(server.url), tmp_path, progress=False, say=said.append)
    assert path.read_bytes() == PAYLOAD
    assert len(said) == 1 and "Content-Range 'bytes 0-" in said[0] and "discarded the partial file" in said[0]
    assert [_range_start(h) for h in server.requests] == [30_000, 0]


def test_a_416_for_a_part_of_unknown_size_and_a_part_too_large_are_discarded(tmp_path: Path, serve) -> None:
    def range_refused(conn: socket.socket, head: bytes) -> None:
        if _range_start(head):
            conn.sendall(b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\n\r\n")
        else:
            _honest(conn, head)

    server = serve(range_refused)
    (tmp_path / ".file.bin.part").write_bytes(b"x" * 1000)
    said: list[str] = []
    fetch(_entry(server.url, size=False), tmp_path, progress=False, say=said.append)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD and "answered 416" in said[0]
    (tmp_path / "file.bin").unlink()
    (tmp_path / ".file.bin.part").write_bytes(b"x" * (len(PAYLOAD) + 5))
    said.clear()
    fetch(_entry(server.url), tmp_path, progress=False, say=said.append)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD and "more than the file can have" in said[0]


# ------------------------------------------------------------------------------------------------ not HTTP
@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", "not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n", "not valid HTTP"),
        (b"", "not valid HTTP"),
        (b"HTTP/1.1 302 Found\r\nLocation: file:///etc/hostname\r\nContent-Length: 0\r\n\r\n", "is not allowed"),
        (b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", "HTTP 500 Oops"),
    ],
    ids=["garbage-status", "70kb-header", "200-headers", "closed", "redirect-to-file", "server-error"],
)
def test_answers_that_are_not_http_are_one_line(tmp_path: Path, serve, capsys, answer: bytes, said: str) -> None:
    server = serve(lambda conn, head: conn.sendall(answer))
    line = _cli_error(tmp_path, _entry(server.url), capsys)
    assert said in line and server.url in line and len(line) < 400
    assert not (tmp_path / "dl" / "file.bin").exists()


def test_a_redirect_from_https_to_plain_http_is_refused() -> None:
    import urllib.request

    handler = _NoDowngradeRedirects()
    request = urllib.request.Request("https://example.invalid/file.bin")
    with pytest.raises(OSError, match=r"redirects to plain http \(http://example.invalid/file.bin\): refused"):
        handler.redirect_request(request, None, 302, "Found", {}, "http://example.invalid/file.bin")
    kept = handler.redirect_request(request, None, 302, "Found", {}, "https://mirror.invalid/file.bin")
    assert kept is not None and kept.full_url == "https://mirror.invalid/file.bin"


# ------------------------------------------------------------------------------------------------ registry
@pytest.mark.parametrize(
    ("item", "said"),
    [
        ({"size": "abc"}, "files[0] ('test-file'): size 'abc' must be a whole number of bytes"),
        ({"size": True}, "size True must be a whole number"),
        ({"filename": "../../.bashrc"}, "filename '../../.bashrc' is not a plain file name"),
        ({"url": "file:///etc/passwd"}, "url 'file:///etc/passwd' is not an http:// or https:// address"),
        ({"max_size": 10**30}, "max_size 1000000000000000000000000000000 must be between 1 and"),
        ({"sha256": 5}, "sha256 5 must be a string"),
    ],
)
def test_registry_mistakes_are_one_line_naming_the_entry(tmp_path: Path, capsys, item: dict, said: str) -> None:
    fields = {"name": "test-file", "kind": "embeddings", "url": "https://example.invalid/f", "description": "x"}
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"files": [{**fields, **item}]}))
    assert main(["weights", "fetch", "test-file", "--to", str(tmp_path), "--registry", str(reg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"registry file {reg}" in err and said in err


def test_registry_files_that_are_not_registries_are_one_line(tmp_path: Path, capsys) -> None:
    reg = tmp_path / "registry.json"
    for text in ('{"files": [5]}', '{"files": [{"name": "x"}]}', "[" * 100_000, '{"files": "x"}'):
        reg.write_text(text)
        assert main(["weights", "list", "--registry", str(reg)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(reg) in err and "Traceback" not in err
    reg.write_bytes(b" " * (2 << 20))
    assert main(["weights", "list", "--registry", str(reg)]) == 2
    assert "more than a registry can" in capsys.readouterr().err
