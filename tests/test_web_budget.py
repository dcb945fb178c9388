"""`otseg.web_budget`: request bodies bounded in size, in number received at once and in time; the cache folder
bounded in bytes (oldest files deleted first). Driven as plain ASGI calls, no server."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from otseg.web_budget import SMALL_BODY_BYTES, CacheBudget, UploadBudget


class _Recorder:
    """An ASGI app that reads the whole body slowly, records how many bodies it received at once, answers 200."""

    def __init__(self, hold_s: float = 0.05) -> None:
        self.active = 0
        self.peak = 0
        self.bodies: list[int] = []
        self.hold_s = hold_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RuntimeError("client went away")
                size += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
            await asyncio.sleep(self.hold_s)
            self.bodies.append(size)
        finally:
            self.active -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _request(
    app: Any, body: bytes, *, declare: bool = True, chunk: int = 16384, delay_s: float = 0.0, files: bool = False
) -> tuple[int, bytes]:
    headers = [(b"content-length", str(len(body)).encode())] if declare else []
    if files:
        headers.append((b"content-type", b"multipart/form-data; boundary=x"))
    scope = {"type": "http", "method": "POST", "path": "/gradio_api/upload", "headers": headers}
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    sent: list[dict] = []

    async def receive() -> dict:
        if delay_s:
            await asyncio.sleep(delay_s)
        piece = pieces.pop(0) if pieces else b""
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_large_bodies_are_received_at_most_two_at_once() -> None:
    inner = _Recorder()
    app = UploadBudget(inner, max_body_bytes=1 << 20, max_concurrent=2)

    async def many() -> list[tuple[int, bytes]]:
        return await asyncio.gather(*(_request(app, b"x" * 200_000) for _ in range(12)))

    results = asyncio.run(many())
    assert [status for status, _ in results] == [200] * 12
    assert inner.peak == 2 and inner.bodies == [200_000] * 12


def test_small_bodies_do_not_wait_for_upload_slots() -> None:
    inner = _Recorder(hold_s=0.2)
    app = UploadBudget(inner, max_body_bytes=1 << 20, max_concurrent=1)

    async def many() -> list[tuple[int, bytes]]:
        return await asyncio.gather(*(_request(app, b"{}" * 100) for _ in range(6)))

    assert [s for s, _ in asyncio.run(many())] == [200] * 6
    assert inner.peak == 6  # JSON calls of the page run side by side
    assert SMALL_BODY_BYTES >= 64 * 1024


def test_a_body_over_the_cap_is_refused_declared_or_streamed() -> None:
    inner = _Recorder()
    app = UploadBudget(inner, max_body_bytes=100_000)
    status, text = asyncio.run(_request(app, b"x" * 100_001))
    assert status == 413 and b"at most 100,000" in text and inner.bodies == []  # not a byte read
    status, text = asyncio.run(_request(app, b"x" * 300_000, declare=False))  # chunked: cut while streaming
    assert status == 413 and b"over 100,000 bytes" in text and inner.bodies == []


def test_waiting_for_a_slot_and_receiving_a_body_are_bounded_in_time() -> None:
    inner = _Recorder(hold_s=1.0)
    app = UploadBudget(inner, max_body_bytes=1 << 20, max_concurrent=1, wait_s=0.2)

    async def two() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        return await asyncio.gather(_request(app, b"x" * 100_000), _request(app, b"x" * 100_000))

    assert sorted(s for s, _ in asyncio.run(two())) == [200, 503]
    slow = UploadBudget(_Recorder(), max_body_bytes=1 << 20, body_timeout_s=0.3)
    start = time.monotonic()
    status, text = asyncio.run(_request(slow, b"x" * 100_000, chunk=1000, delay_s=0.05))  # 100 pieces, 5 s
    assert status == 408 and b"did not arrive within" in text and time.monotonic() - start < 2


def _file(path: Path, size: int, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def test_the_cache_is_kept_under_its_cap_oldest_first(tmp_path: Path) -> None:
    cache = CacheBudget(tmp_path, max_bytes=250_000)
    old = _file(tmp_path / "a" / "old.png", 100_000, age_s=300)
    mid = _file(tmp_path / "b" / "mid.png", 100_000, age_s=200)
    new = _file(tmp_path / "c" / "new.png", 100_000, age_s=100)
    assert cache.used_bytes() == 300_000
    assert cache.make_room() == 100_000
    assert not old.exists() and not old.parent.exists() and mid.exists() and new.exists()
    assert cache.make_room(incoming=150_000) == 100_000  # room for an upload on its way
    assert not mid.exists() and new.exists() and cache.used_bytes() == 100_000
    outside = _file(tmp_path.parent / f"{tmp_path.name}-outside.bin", 10, age_s=1000)
    (tmp_path / "link").symlink_to(outside)
    cache.make_room(incoming=250_000)
    assert outside.exists()  # links are not followed
    with pytest.raises(ValueError):
        CacheBudget(tmp_path, 0)


@pytest.mark.parametrize("size", [100_000, 45_000], ids=["large", "small-uploads"])
def test_bodies_on_their_way_have_room_reserved_in_the_cache(tmp_path: Path, size: int) -> None:
    """Uploads are written into the cache folder while they arrive (gradio does): with room reserved for what is
    still to arrive of every body on its way, the folder never holds more than its cap, not even while two
    arrive at once, and no upload is deleted while it arrives (small uploads take upload slots too)."""
    cap = 350_000
    for i in range(3):
        _file(tmp_path / f"old{i}" / "f.bin", 100_000, age_s=100 + i)
    seen: list[int] = []
    lost: list[Path] = []
    count = iter(range(100))

    async def writer(scope: Any, receive: Any, send: Any) -> None:  # stores the body in the cache as it arrives
        path = tmp_path / f"new{next(count)}" / "upload.bin"
        path.parent.mkdir()
        with path.open("wb") as f:
            while True:
                message = await receive()
                f.write(message.get("body", b""))
                f.flush()
                seen.append(CacheBudget(tmp_path, 1).used_bytes())
                await asyncio.sleep(0.001)
                if not message.get("more_body"):
                    break
        if not path.exists():
            lost.append(path)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = UploadBudget(writer, max_body_bytes=150_000, max_concurrent=2, cache=CacheBudget(tmp_path, cap))

    async def many() -> list[tuple[int, bytes]]:
        return await asyncio.gather(*(_request(app, b"x" * size, chunk=5_000, files=True) for _ in range(8)))

    assert [s for s, _ in asyncio.run(many())] == [200] * 8
    assert max(seen) <= cap and CacheBudget(tmp_path, 1).used_bytes() <= cap and lost == []
