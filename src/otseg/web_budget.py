"""What `otseg serve` lets visitors put on the server: request bodies in flight and files in gradio's cache,
both bounded in bytes.

`UploadBudget` is an ASGI middleware (framework-free: it sees only `scope`, `receive` and `send`):

* every request body is capped (`max_body_bytes`): a larger declared Content-Length is answered 413 before a
  byte is read, and a body that grows past the cap while streaming (chunked uploads) is cut off and answered 413;
* file uploads (multipart bodies) and bodies that may be large (a declared length over `SMALL_BODY_BYTES`, or
  none) are received at most `max_concurrent` at a time; the others wait up to `wait_s` and are then answered
  503, so the bytes in flight stay below `max_concurrent x max_body_bytes` plus the page's small JSON calls;
* a body must arrive within `body_timeout_s` (a visitor who sends a byte a second cannot hold a slot forever);
* before such a body is received, `CacheBudget` deletes the oldest files of the cache folder until the folder
  fits in its byte cap together with what is still to arrive of every body on its way (declared sizes, or the
  body cap when none is declared), and again when it is done; so the folder, uploads being written into it
  included, stays under the cap, and no upload on its way is deleted as long as the cap holds `max_concurrent`
  bodies (`launch` makes sure).

`CacheBudget` walks one folder (gradio's upload and result cache) and deletes its oldest files first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otseg.errors import BadValueError

__all__ = ["SMALL_BODY_BYTES", "CacheBudget", "UploadBudget"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SMALL_BODY_BYTES = 64 * 1024  # JSON calls of the page (queue joins, class names): never wait for an upload slot


class CacheBudget:
    """Keeps the files under `folder` within `max_bytes`, deleting the oldest (by modification time) first.

    The folder is gradio's cache for this page: uploads and results. A deleted upload that a visitor submits
    later gets "upload it again" from the page.
    """

    def __init__(self, folder: str | os.PathLike[str], max_bytes: int) -> None:
        if max_bytes <= 0:
            raise BadValueError(f"the cache cap must be positive, got {max_bytes}")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def files(self) -> list[tuple[float, int, Path]]:
        """(modification time, size, path) of every regular file below the folder (links are not followed)."""
        found: list[tuple[float, int, Path]] = []
        stack = [self.folder]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                stack.append(Path(entry.path))
                            elif entry.is_file(follow_symlinks=False):
                                st = entry.stat(follow_symlinks=False)
                                found.append((st.st_mtime, st.st_size, Path(entry.path)))
                        except OSError:
                            continue  # removed while we looked
            except OSError:
                continue
        return found

    def used_bytes(self) -> int:
        return sum(size for _, size, _ in self.files())

    def make_room(self, incoming: int = 0) -> int:
        """Delete the oldest files until the folder plus `incoming` bytes fits the cap; returns the bytes freed."""
        with self._lock:
            files = sorted(self.files(), key=lambda f: f[0])
            used = sum(size for _, size, _ in files)
            freed = 0
            for _, size, path in files:
                if used - freed + incoming <= self.max_bytes:
                    break
                with contextlib.suppress(OSError):
                    path.unlink()
                    freed += size
                    with contextlib.suppress(OSError):
                        path.parent.rmdir()  # gradio keeps each file in a folder of its own; drop it when empty
            return freed


class _BodyTooLarge(Exception):
    pass


@dataclass
class _Ticket:
    """The cache bytes reserved for one body that have not arrived yet."""

    left: int


@dataclass
class _Exchange:
    """One request as the middleware saw it: whether the response began, and why the body was refused ("")."""

    started: bool = False
    refused: str = ""


class UploadBudget:
    """ASGI middleware bounding request bodies: their size, how many large ones are received at once, how long
    one may take, and (with a `CacheBudget`) the bytes they leave in the cache."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_concurrent: int = 2,
        wait_s: float = 30.0,
        body_timeout_s: float = 120.0,
        cache: CacheBudget | None = None,
    ) -> None:
        if max_body_bytes <= 0 or max_concurrent <= 0:
            raise BadValueError("max_body_bytes and max_concurrent must be positive")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_concurrent = max_concurrent
        self.wait_s = wait_s
        self.body_timeout_s = body_timeout_s
        self.cache = cache
        self._slots: asyncio.Semaphore | None = None  # made in the server's event loop, on first use
        self._pending = 0  # cache bytes promised to what is still to arrive of the bodies on their way

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _reply(
                send, 413, f"request body of {declared:,} bytes; this server takes at most {self.max_body_bytes:,}"
            )
            return
        if declared is not None and declared <= SMALL_BODY_BYTES and not _is_multipart(scope):
            await self._run(scope, receive, send, None)  # a JSON call of the page: nothing lands in the cache
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.wait_s)
        except asyncio.TimeoutError:
            await _reply(send, 503, "the server is receiving other uploads; try again in a moment")
            return
        # Room in the cache for what is still to arrive of this body and of every other body on its way (gradio
        # writes an upload into the cache folder while it arrives, so what has arrived is in the folder already).
        ticket = _Ticket(declared if declared is not None else self.max_body_bytes)
        self._pending += ticket.left
        try:
            if self.cache is not None:
                await asyncio.to_thread(self.cache.make_room, self._pending)
            await self._run(scope, receive, send, ticket)
        finally:
            self._pending -= ticket.left
            ticket.left = 0
            self._slots.release()
            if self.cache is not None:
                await asyncio.to_thread(self.cache.make_room, self._pending)

    async def _run(self, scope: Scope, receive: Receive, send: Send, ticket: _Ticket | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        received = 0
        state = _Exchange()

        async def counted_receive() -> Message:
            nonlocal received
            if state.refused:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                state.refused = f"the request body did not arrive within {self.body_timeout_s:.0f} s"
                raise _BodyTooLarge() from None
            if message.get("type") == "http.request":
                size = len(message.get("body", b""))
                received += size
                if ticket is not None:  # arrived: now counted in the folder, no longer in the reservation
                    arrived = min(size, ticket.left)
                    ticket.left -= arrived
                    self._pending -= arrived
                if received > self.max_body_bytes:
                    state.refused = f"request body over {self.max_body_bytes:,} bytes; this server takes no more"
                    raise _BodyTooLarge()
            return message

        async def watched_send(message: Message) -> None:
            if message.get("type") == "http.response.start":
                state.started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except Exception:
            if not state.refused:
                raise
        if state.refused and not state.started:
            await _reply(send, 413 if "over" in state.refused else 408, state.refused)


def _is_multipart(scope: Scope) -> bool:
    for key, value in scope.get("headers", []):
        if key.lower() == b"content-type":
            return bool(value.lower().startswith(b"multipart/"))
    return False


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) < 20 else None
    return None


async def _reply(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
