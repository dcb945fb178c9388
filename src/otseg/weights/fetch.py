"""Downloading a registry entry: resumable (HTTP Range), checksum-verified, atomic.

The bytes go to `DIR/.FILENAME.part`; an interrupted download continues from the part's size on the next
call (a server that ignores Range restarts it from zero). Only a file whose digests match the registry is
renamed to `DIR/FILENAME`; a mismatch deletes the part and fails. Entries without a direct URL print the
manual steps instead.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from otseg.weights.registry import RegistryEntry, file_digests

__all__ = ["fetch", "manual_steps"]

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


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
    return entry.url.rstrip("/").rsplit("/", 1)[-1]


def fetch(
    entry: RegistryEntry,
    dest_dir: str | Path,
    *,
    progress: bool = True,
    timeout_s: float = _TIMEOUT_S,
    max_bytes: int | None = None,
) -> Path:
    """Download `entry` into `dest_dir` and return the final path (already there and verified: no download).

    Raises:
        ValueError: the entry has no direct URL (the message holds the manual steps), or the downloaded
            bytes do not match the registry's size or digest (the partial file is removed).
        OSError: the server could not be reached or answered with an error.
    """
    dest = Path(dest_dir).expanduser()
    if entry.url is None:
        raise ValueError(manual_steps(entry, dest).replace("\n", " "))
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / _final_name(entry)
    if final.is_file() and _matches(entry, final):
        return final
    part = dest / f".{final.name}.part"
    limit = max_bytes if max_bytes is not None else (entry.size if entry.size is not None else None)
    _download(entry.url, part, limit=limit, timeout_s=timeout_s, progress=progress)
    got_size = part.stat().st_size
    if entry.size is not None and got_size < entry.size:
        raise OSError(
            f"{entry.url}: download incomplete ({got_size:,} of {entry.size:,} bytes, kept in {part}); run the "
            "command again to resume"
        )
    if entry.size is not None and got_size > entry.size:
        part.unlink()
        raise ValueError(f"{entry.url} gave {got_size:,} bytes, {entry.name} has {entry.size:,}: removed; run again")
    if entry.digests:
        got_digests = file_digests(part, tuple(entry.digests))
        bad = {k: got_digests[k] for k, v in entry.digests.items() if got_digests[k] != v}
        if bad:
            part.unlink()
            k = next(iter(bad))
            raise ValueError(
                f"{entry.url}: downloaded file has {k} {bad[k]}, {entry.name} has {entry.digests[k]}: the "
                "partial file was removed; run the command again (or get it from "
                f"{entry.page or entry.url})"
            )
    with open(part, "rb") as f:
        os.fsync(f.fileno())
    os.replace(part, final)
    return final


def _matches(entry: RegistryEntry, path: Path) -> bool:
    if entry.size is not None and path.stat().st_size != entry.size:
        return False
    if not entry.digests:
        return entry.size is not None  # nothing else to check: a size match is all we can say
    got = file_digests(path, tuple(entry.digests))
    return all(got[k] == v for k, v in entry.digests.items())


def _download(url: str, part: Path, *, limit: int | None, timeout_s: float, progress: bool) -> None:
    """Append `url`'s bytes to `part` from its current size (Range); restart if the server ignores Range."""
    have = part.stat().st_size if part.is_file() else 0
    if limit is not None and have > limit:
        part.unlink()
        have = 0
    if limit is not None and have == limit:
        return
    request = urllib.request.Request(url, headers={"User-Agent": "otseg"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part is already complete
            return
        raise OSError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError) as exc:
        raise OSError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from None
    with response:
        status = response.status
        if have and status != 206:
            have = 0  # no Range support: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None and length.isdigit() else None
        if limit is not None and total is not None and total > limit:
            raise ValueError(f"{url} announces {total:,} bytes, more than the expected {limit:,}; not downloading")
        bar = None
        if progress:
            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=part.name.strip(".")[:-5])
        try:
            with open(part, "ab" if have else "wb") as f:
                written = have
                try:
                    while chunk := response.read(_CHUNK):
                        written += len(chunk)
                        if limit is not None and written > limit:
                            raise ValueError(f"{url} sent more than the expected {limit:,} bytes; stopped")
                        f.write(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
                    f.write(getattr(exc, "partial", b"") or b"")
                    raise OSError(
                        f"{url}: connection lost after {f.tell():,} bytes ({type(exc).__name__}); run the command "
                        "again to resume"
                    ) from None
            if total is not None and written < total:
                raise OSError(f"{url}: connection closed after {written:,} of {total:,} bytes; run the command again "
                              "to resume")  # fmt: skip
        finally:
            if bar is not None:
                bar.close()
