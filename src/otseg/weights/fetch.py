"""Downloading a registry entry: resumable (HTTP Range), checksum-verified, atomic, bounded.

The bytes go to `DIR/.FILENAME.part`; an interrupted download continues from the part's size on the next
call (a server that ignores Range restarts it from zero). Only a file whose digests match the registry is
renamed to `DIR/FILENAME`; a mismatch deletes the part and fails. Entries without a direct URL print the
manual steps instead.

What a hostile or broken server cannot do:

* write through a link: the part file is opened with O_NOFOLLOW (created with O_EXCL), and a part that is a
  symbolic link or not a regular file is refused, so a link planted at `.FILENAME.part` never has its target
  overwritten;
* send more than the file can be: the registry's exact `size`, else its `max_size`, else `DEFAULT_MAX_BYTES`
  caps what is written (an announced larger Content-Length is refused before any byte is written);
* hold the download forever: every network operation times out (`timeout_s`), the whole download has a
  deadline (`deadline_s`, by default from the expected size at `MIN_AVERAGE_RATE`, checked even while the
  status line and headers trickle in), and a transfer slower than `MIN_RATE` over `RATE_WINDOW_S` stops;
* downgrade the transport: a redirect from https to plain http, or to any scheme other than http(s), is
  refused (the packaged registry uses https wherever the publisher serves it);
* leave a part that can never be resumed: a 206 answer that does not continue at the part's end, a 416 for a
  part of unknown completeness, or a part larger than the file is discarded, with a line that says so;
* end in a traceback: garbage status lines, over-long or too many headers (http.client's exceptions), TLS and
  socket errors all become one line naming the URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import os
import re
import socket
import ssl
import stat
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm

from otseg.errors import BadFileError, BadValueError
from otseg.weights.registry import RegistryEntry, file_digests

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MIN_AVERAGE_RATE",
    "MIN_RATE",
    "RATE_WINDOW_S",
    "fetch",
    "manual_steps",
]

_CHUNK = 1 << 16
_TIMEOUT_S = 60.0  # any single connect / send / receive
DEFAULT_MAX_BYTES = 32 << 30  # a registry entry with neither size nor max_size: no download writes more
MIN_AVERAGE_RATE = 100_000  # bytes/s the default overall deadline allows for (plus _DEADLINE_BASE_S)
_DEADLINE_BASE_S = 600.0
MIN_RATE = 1_000  # bytes/s: slower than this over RATE_WINDOW_S is a stalled (or trickling) server
RATE_WINDOW_S = 60.0
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted at the part's name must not block the open
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def manual_steps(entry: RegistryEntry, dest: str | Path) -> str:
    """What a person does to get an entry that has no direct URL."""
    target = Path(dest) / (entry.filename or "<the downloaded file>")
    lines = [
        f"{entry.name} has no direct download URL: {entry.description}",
        f"  1. open {entry.page} in a browser and download the file",
        f"  2. save it as {target}",
    ]
    if entry.digests:
        lines.append(f"  3. otseg weights verify {target}   (checks its {', '.join(entry.digests)})")
    else:
        lines.append("  3. no checksum is published for it: keep the file you downloaded from that page")
    return "\n".join(lines)


def _final_name(entry: RegistryEntry) -> str:
    if entry.filename:
        return entry.filename
    assert entry.url is not None
    name = urlsplit(entry.url).path.rstrip("/").rsplit("/", 1)[-1]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}", name):
        raise BadValueError(
            f"registry entry {entry.name}: its URL ends in {name[:60]!r}, not a plain file name; give the entry a "
            "filename"
        )
    return name


def _say(line: str) -> None:
    print(f"otseg weights: {line}", file=sys.stderr, flush=True)


def _short(text: object, limit: int = 120) -> str:
    """An exception's text on one line, cut (a garbage status line can be 64 KB)."""
    one = " ".join("".join(c if c.isprintable() else "?" for c in str(text)).split())
    return one if len(one) <= limit else one[:limit] + "..."


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch(
    entry: RegistryEntry,
    dest_dir: str | Path,
    *,
    progress: bool = True,
    timeout_s: float = _TIMEOUT_S,
    max_bytes: int | None = None,
    deadline_s: float | None = None,
    min_rate: float = MIN_RATE,
    rate_window_s: float = RATE_WINDOW_S,
    say: Callable[[str], None] = _say,
) -> Path:
    """Download `entry` into `dest_dir` and return the final path (already there and verified: no download).

    Args:
        timeout_s: the longest any single network operation may wait.
        max_bytes: the most bytes written (default: the entry's size, else its max_size, else
            `DEFAULT_MAX_BYTES`).
        deadline_s: the whole download's deadline (default: `_DEADLINE_BASE_S` plus the expected bytes at
            `MIN_AVERAGE_RATE`); a part written before it stays, to resume.
        min_rate, rate_window_s: slower than `min_rate` bytes/s over `rate_window_s` seconds stops the download
            (a part written before stays, to resume).
        say: where one-line notes go (a discarded part, plain http): stderr by default.

    Raises:
        ValueError: the entry has no direct URL (the message holds the manual steps), the downloaded bytes do
            not match the registry's size or digest (the part is removed), the server sends or announces more
            than the cap, or the part's name holds a link or something other than a file.
        OSError: the server could not be reached, answered with an error or with something that is not HTTP,
            was too slow, or the deadline passed (a part written so far stays, to resume).
    """
    dest = Path(dest_dir).expanduser()
    if entry.url is None:
        raise BadValueError(manual_steps(entry, dest).replace("\n", " "))
    url = entry.url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BadValueError(f"registry entry {entry.name}: {url} is not an http:// or https:// address")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        say(f"note: {url} is plain http (the publisher serves no https): only the registry's digest protects it")
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / _final_name(entry)
    if final.is_file() and _matches(entry, final):
        return final
    part = dest / f".{final.name}.part"
    limit = max_bytes if max_bytes is not None else entry.size or entry.max_size or DEFAULT_MAX_BYTES
    if deadline_s is None:
        deadline_s = _DEADLINE_BASE_S + limit / MIN_AVERAGE_RATE
    download = _Download(url, part, limit, entry.size, timeout_s, deadline_s, min_rate, rate_window_s, progress, say)
    download.run()

    got_size = _part_size(part)
    if entry.size is not None and got_size < entry.size:
        raise BadFileError(
            f"{url}: download incomplete ({got_size:,} of {entry.size:,} bytes, kept in {part}); run the "
            "command again to resume"
        )
    if entry.size is not None and got_size > entry.size:
        part.unlink()
        raise BadValueError(f"{url} gave {got_size:,} bytes, {entry.name} has {entry.size:,}: removed; run again")
    if entry.digests:
        got_digests = _digests_nofollow(part, tuple(entry.digests))
        bad = {k: got_digests[k] for k, v in entry.digests.items() if got_digests[k] != v}
        if bad:
            part.unlink()
            k = next(iter(bad))
            raise BadValueError(
                f"{url}: downloaded file has {k} {bad[k]}, {entry.name} has {entry.digests[k]}: the "
                "partial file was removed; run the command again (or get it from "
                f"{entry.page or url})"
            )
    fd = os.open(part, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, final)  # a rename: never follows a link at `final`
    return final


def _matches(entry: RegistryEntry, path: Path) -> bool:
    if entry.size is not None and path.stat().st_size != entry.size:
        return False
    if not entry.digests:
        return entry.size is not None  # nothing else to check: a size match is all we can say
    got = file_digests(path, tuple(entry.digests))
    return all(got[k] == v for k, v in entry.digests.items())


def _part_size(part: Path) -> int:
    """The part's size; 0 when there is none. ValueError when its name holds a link or not a regular file."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return 0
    if stat.S_ISLNK(st.st_mode):
        raise BadValueError(
            f"{part} is a symbolic link (to {os.readlink(part)}), not a partial download: nothing was written "
            f"through it; remove it (rm {part}) and run the command again"
        )
    if not stat.S_ISREG(st.st_mode):
        raise BadValueError(
            f"{part} is not a regular file, not a partial download: remove it and run the command again"
        )
    return st.st_size


def _open_part(part: Path, append: bool) -> int:
    """A descriptor to write the part: appended to (it must be a regular file, not a link), or created anew (any
    old part removed first; O_EXCL: a link planted in between fails instead of being followed)."""
    _part_size(part)  # refuses links and other non-files with a message
    try:
        if append:
            fd = os.open(part, os.O_WRONLY | os.O_APPEND | _NOFOLLOW | _NONBLOCK | _CLOEXEC)
        else:
            part.unlink(missing_ok=True)
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
    except OSError as exc:
        raise BadValueError(
            f"{part}: cannot open it to write without following links ({exc.strerror}); remove it and run the "
            "command again"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadValueError(
            f"{part} is not a regular file, not a partial download: remove it and run the command again"
        )
    return fd


def _digests_nofollow(part: Path, kinds: tuple[str, ...]) -> dict[str, str]:
    hashes = {k: hashlib.new(k) for k in kinds}
    fd = os.open(part, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            for h in hashes.values():
                h.update(chunk)
    return {k: h.hexdigest() for k, h in hashes.items()}


# ---- the network side -----------------------------------------------------------------------------------


class _Deadline:
    """The whole download's deadline: when it passes, every socket opened for it is shut down, which ends a
    receive that would otherwise wait for the next trickled byte (a status line or header sent a byte at a time
    included)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def passed(self) -> bool:
        return self.expired or time.monotonic() >= self.at

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


def _watched(connection_class: type[http.client.HTTPConnection], deadline: _Deadline) -> Callable[..., Any]:
    """`connection_class` whose sockets the deadline watches (from the moment they connect)."""

    def make(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
        conn = connection_class(*args, **kwargs)
        create = conn._create_connection  # type: ignore[attr-defined]
        conn._create_connection = lambda *a, **k: deadline.watch(create(*a, **k))  # type: ignore[attr-defined]
        return conn

    return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(http.client.HTTPConnection, self._deadline), req)  # type: ignore[arg-type]


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__(context=ssl.create_default_context())
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        make = _watched(http.client.HTTPSConnection, self._deadline)
        return self.do_open(make, req, context=self._context)  # type: ignore[arg-type, attr-defined]


class _NoDowngradeRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects stay on http(s), and an https download never continues over plain http."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        old, new = urlsplit(req.full_url).scheme, urlsplit(newurl).scheme
        if new not in ("http", "https"):
            raise _Refused(f"{req.full_url} redirects to {_short(newurl)}, not an http(s) address: refused")
        if old == "https" and new == "http":
            raise _Refused(
                f"{req.full_url} redirects to plain http ({_short(newurl)}): refused, the download would lose "
                "https; get the file from the publisher's https address"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Refused(BadFileError):
    """A redirect refused (raised from inside urllib's handler chain, re-raised as is)."""


class _Download:
    """One attempt (or two, when a part that cannot be resumed is discarded) to fill `part` from `url`."""

    def __init__(
        self,
        url: str,
        part: Path,
        limit: int,
        size: int | None,
        timeout_s: float,
        deadline_s: float,
        min_rate: float,
        rate_window_s: float,
        progress: bool,
        say: Callable[[str], None],
    ) -> None:
        self.url, self.part, self.limit, self.size = url, part, limit, size
        self.timeout_s, self.deadline_s = timeout_s, deadline_s
        self.min_rate, self.rate_window_s = min_rate, rate_window_s
        self.progress, self.say = progress, say

    def run(self) -> None:
        deadline = _Deadline(self.deadline_s)
        opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline), _NoDowngradeRedirects())
        try:
            if self._attempt(opener, deadline) == "restart":
                self._attempt(opener, deadline, restart=True)
        finally:
            deadline.cancel()

    def _discard(self, why: str) -> None:
        self.part.unlink(missing_ok=True)
        self.say(f"{why}: discarded the partial file {self.part} and starting the download over")

    def _too_late(self, deadline: _Deadline, written: int) -> OSError:
        return OSError(
            f"{self.url}: not finished within the deadline of {self.deadline_s:,.0f} s ({written:,} bytes so far, "
            f"kept in {self.part}); run the command again to resume"
        )

    def _attempt(self, opener: urllib.request.OpenerDirector, deadline: _Deadline, restart: bool = False) -> str:
        have = _part_size(self.part)
        if have > self.limit:
            self._discard(f"the partial file has {have:,} bytes, more than the file can have ({self.limit:,})")
            have = 0
        if self.size is not None and have == self.size:
            return "done"
        request = urllib.request.Request(self.url, headers={"User-Agent": "otseg", "Accept-Encoding": "identity"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = opener.open(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and have:
                if self.size is None and restart is False:
                    # The server says the part already reaches the end, which nothing here can confirm.
                    self._discard(f"{self.url} answered 416 (range not satisfiable) to a resume at byte {have:,}")
                    return "restart"
                return "done"  # the size check and the digests decide
            raise BadFileError(f"{self.url}: HTTP {exc.code} {_short(exc.reason, 80)}") from None
        except _Refused as exc:
            raise BadFileError(str(exc)) from None
        except urllib.error.URLError as exc:
            if deadline.passed():
                raise self._too_late(deadline, have) from None
            raise BadFileError(f"cannot download {self.url}: {_short(exc.reason)}") from None
        except http.client.HTTPException as exc:
            if deadline.passed():
                raise self._too_late(deadline, have) from None
            raise BadFileError(
                f"{self.url}: the server's answer is not valid HTTP ({type(exc).__name__}: {_short(exc, 80)}); try "
                "again later, or get the file from the publisher's page"
            ) from None
        except (OSError, ValueError) as exc:  # socket and TLS errors, timeouts; urllib's ValueError for bad URLs
            if deadline.passed():
                raise self._too_late(deadline, have) from None
            raise BadFileError(f"cannot download {self.url}: {type(exc).__name__}: {_short(exc)}") from None
        with response:
            return self._receive(response, have, deadline, restart)

    def _receive(self, response: Any, have: int, deadline: _Deadline, restart: bool) -> str:
        status = response.status
        if have and status == 206:
            content_range = response.headers.get("Content-Range", "")
            match = _CONTENT_RANGE.fullmatch(content_range.strip())
            if match is None or int(match.group(1)) != have:
                if restart:
                    raise BadFileError(f"{self.url}: the server answered 206 without the asked range; try again later")
                self._discard(
                    f"{self.url} answered a resume at byte {have:,} with Content-Range {_short(content_range, 60)!r}"
                )
                return "restart"
        elif have and status != 206:
            # No Range support: the body is the whole file. Start over (said, since the part is lost).
            self.say(f"{self.url} does not resume downloads (HTTP {status}): starting over from byte 0")
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None and length.strip().isdigit() else None
        if total is not None and total > self.limit:
            if have:
                self._discard(f"{self.url} announces {total:,} bytes from byte {have:,}, more than the file can have")
                return "restart"
            raise BadValueError(
                f"{self.url} announces {total:,} bytes, more than the expected {self.limit:,}; not downloading"
            )
        bar = None
        if self.progress:
            name = self.part.name.removeprefix(".").removesuffix(".part")
            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=name)
        fd = _open_part(self.part, append=bool(have))
        try:
            with os.fdopen(fd, "ab" if have else "wb") as f:
                written = have
                window_start, window_bytes = time.monotonic(), written
                try:
                    while True:
                        if deadline.passed():
                            raise self._too_late(deadline, written)
                        chunk = response.read1(_CHUNK)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > self.limit:
                            f.close()
                            self.part.unlink(missing_ok=True)  # more than the file can have: not the file
                            raise BadValueError(
                                f"{self.url} sent more than the {self.limit:,} bytes the file can have; stopped and "
                                "removed the partial file"
                            )
                        f.write(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                        now = time.monotonic()
                        if now - window_start >= self.rate_window_s:
                            rate = (written - window_bytes) / (now - window_start)
                            if rate < self.min_rate:
                                raise BadFileError(
                                    f"{self.url}: the server sends {rate:,.0f} bytes/s, less than {self.min_rate:,.0f} "
                                    f"({written:,} bytes so far, kept in {self.part}); run the command again to resume"
                                )
                            window_start, window_bytes = now, written
                except (http.client.HTTPException, OSError) as exc:
                    if isinstance(exc, OSError) and str(exc).startswith(self.url):
                        raise  # ours, already one line
                    f.flush()
                    if deadline.passed():
                        raise self._too_late(deadline, f.tell()) from None
                    raise BadFileError(
                        f"{self.url}: connection lost after {f.tell():,} bytes ({type(exc).__name__}); run the "
                        "command again to resume"
                    ) from None
                if deadline.passed():
                    raise self._too_late(deadline, written)
            if total is not None and written < total:
                raise BadFileError(
                    f"{self.url}: connection closed after {written:,} of {total:,} bytes; run the command again "
                    "to resume"
                )
        finally:
            if bar is not None:
                bar.close()
        return "done"
