"""Shared helpers of the dataset converters: finding the official downloads (archives or the folders they
extract to), reading their members, checksums, atomic writes and the worker pool with a progress bar.

Inputs. Each download is looked for in `--src` as the archive itself (`VOCtrainval_11-May-2012.tar`) or as
the folder it extracts to, found by a marker path (`VOC2012/JPEGImages`) up to three folders deep. An
`Input` yields the files under one *anchor* (e.g. `VOC2012/`) with names relative to it, whatever the
archive's own prefix.

Outputs. Every file is written to a temporary name in its folder and renamed when complete, so an interrupted
run leaves either the finished file or nothing under the final name; a re-run skips files that exist and
removes temporaries left behind. Member names are never used as paths: each converter builds the
destination from a validated stem.

Memory. A member is read whole, so members over `MAX_MEMBER_BYTES` are refused from their declared size (a zip
member is inflated no further than that size; tar header records are capped at `MAX_TAR_HEADER_BYTES`); label maps
the converters decode (SBD `.mat`, Context RLE, COCO-Stuff PNG) are checked from their headers against
`MAX_LABEL_SIDE` and `MAX_LABEL_PIXELS` before decoding; and `run_jobs` keeps at most `MAX_BYTES_IN_FLIGHT` of jobs
(each one's payload and the memory its decoding needs, `Job.cost`) submitted at a time, whatever the number of
workers.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import json
import lzma
import os
import re
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from otseg.errors import BadValueError, MissingFileError
from otseg.weights.registry import RegistryEntry, file_digests, find_entry_for_filename, load_registry

__all__ = [
    "MAX_BYTES_IN_FLIGHT",
    "MAX_LABEL_PIXELS",
    "MAX_LABEL_SIDE",
    "MAX_MEMBER_BYTES",
    "Input",
    "Job",
    "Member",
    "PrepareOptions",
    "check_label_size",
    "find_input",
    "remove_stale_temporaries",
    "run_jobs",
    "safe_stem",
    "verify_checksum",
    "write_bytes_atomic",
    "write_lines_atomic",
    "write_list_atomic",
    "write_png_atomic",
]

# A single archive member larger than this is not an image or mask of these datasets: refuse to hold it in memory.
MAX_MEMBER_BYTES = 256 << 20
# A tar header record (pax header, GNU long name) larger than this names no file of these datasets (paths are at
# most 4,096 bytes); tarfile reads each in one call, before the member it describes.
MAX_TAR_HEADER_BYTES = 1 << 20
MAX_MEMBER_NAME_CHARS = 4096
# Label maps the converters decode: PASCAL's are at most 500 px a side, COCO's 640; anything larger than these
# bounds is not an annotation of these datasets, and is refused from its header before it is decoded.
MAX_LABEL_SIDE = 4096
MAX_LABEL_PIXELS = 4096 * 4096
# Bytes of jobs (payloads and the memory their decoding needs) submitted to the worker pool at any time.
MAX_BYTES_IN_FLIGHT = 512 << 20
_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class PrepareOptions:
    """What every converter takes from the command line."""

    src: Path
    data_root: Path
    workers: int = 0  # 0: convert in this process
    progress: bool = True
    verify_checksums: bool = True

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise BadValueError(f"--workers must be >= 0, got {self.workers}")


def check_label_size(height: Any, width: Any, where: str) -> tuple[int, int]:
    """(height, width) of a label map a file declares, as ints within the label-map bounds; else one ValueError
    naming `where` and the values."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadValueError(f"{where}: {name} = {value!r}: expected a whole number of pixels, at least 1")
    if max(height, width) > MAX_LABEL_SIDE or height * width > MAX_LABEL_PIXELS:
        raise BadValueError(
            f"{where}: a {width}x{height} label map is over the limit of {MAX_LABEL_SIDE:,} px a side and "
            f"{MAX_LABEL_PIXELS:,} pixels (the datasets' annotations are at most 640 px a side); not an annotation "
            "of this dataset"
        )
    return height, width


def safe_stem(name: str, what: str) -> str:
    """`name` if it is a plain file stem (no folders, no '..'); else ValueError naming it."""
    if not _STEM.fullmatch(name) or ".." in name:
        shown = repr(name) if len(name) <= 200 else f"{name[:60]!r}... ({len(name):,} characters)"
        raise BadValueError(f"{what}: unexpected file name {shown} (not a plain image stem)")
    return name


# ---- inputs ----------------------------------------------------------------------------------------------


# What reading a truncated or damaged archive raises.
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def _damaged(source: str, exc: BaseException) -> str:
    return (
        f"{source}: cannot read it ({type(exc).__name__}: {' '.join(str(exc).split())}); the download is incomplete "
        "or damaged: download it again"
    )


@dataclass(frozen=True)
class Member:
    """One file of an input: `rel` is its path below the anchor (posix); `path` is set for folder inputs."""

    rel: str
    size: int
    path: Path | None
    _read: Callable[[], bytes] = field(repr=False)
    source: str = ""  # the archive or folder, for messages

    def read(self) -> bytes:
        """The member's bytes (for tar inputs: call before asking the iterator for the next member)."""
        if self.size > MAX_MEMBER_BYTES:
            raise BadValueError(
                f"{self.source}: {self.rel} has {self.size:,} bytes, more than any file of these datasets"
            )
        try:
            return self._read()
        except _ARCHIVE_ERRORS as exc:
            raise BadValueError(_damaged(self.source, exc)) from None


@dataclass(frozen=True)
class Input:
    """An official download found in --src: an archive, or the folder it extracts to."""

    kind: Literal["folder", "zip", "tar"]
    path: Path  # the archive, or (folder) the anchor folder itself
    anchor: str  # archives: the path component(s) the wanted files live under, e.g. "VOC2012/"

    def describe(self) -> str:
        return f"{self.path}" if self.kind == "folder" else f"{self.path} ({self.kind} archive)"

    def members(self, prefixes: tuple[str, ...]) -> Iterator[Member]:
        """Files below the anchor whose relative path starts with one of `prefixes`, in archive/name order."""
        if self.kind == "folder":
            yield from self._folder_members(prefixes)
            return
        try:
            if self.kind == "zip":
                yield from self._zip_members(prefixes)
            else:
                yield from self._tar_members(prefixes)
        except _ARCHIVE_ERRORS as exc:
            raise BadValueError(_damaged(self.describe(), exc)) from None

    def _relative(self, name: str) -> str | None:
        name = name.replace("\\", "/")
        i = ("/" + name).find("/" + self.anchor)
        return None if i < 0 else name[i + len(self.anchor) :]

    def _folder_members(self, prefixes: tuple[str, ...]) -> Iterator[Member]:
        for prefix in prefixes:
            folder = self.path / prefix.rstrip("/")
            if prefix == "" or prefix.endswith("/"):
                if not folder.is_dir():
                    continue
                with os.scandir(folder) as it:
                    entries = sorted((e for e in it if e.is_file()), key=lambda e: e.name)
                for e in entries:
                    p = Path(e.path)
                    yield Member(prefix + e.name, e.stat().st_size, p, p.read_bytes, str(self.path))
            elif folder.is_file():
                yield Member(prefix, folder.stat().st_size, folder, folder.read_bytes, str(self.path))

    def _zip_members(self, prefixes: tuple[str, ...]) -> Iterator[Member]:
        with zipfile.ZipFile(self.path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                rel = self._relative(info.filename)
                if rel is not None and rel.startswith(prefixes):
                    read = functools.partial(_read_zip_member, zf, info, self.describe())
                    yield Member(rel, info.file_size, None, read, self.describe())

    def _tar_members(self, prefixes: tuple[str, ...]) -> Iterator[Member]:
        with _capped_tar(self.path) as tf:
            raw = tf.fileobj
            assert isinstance(raw, _CappedReads)
            while (info := tf.next()) is not None:
                tf.members = []  # type: ignore[attr-defined]  # tarfile keeps every header it read: memory would grow
                if not info.isfile():
                    continue
                if len(info.name) > MAX_MEMBER_NAME_CHARS:
                    raise BadValueError(
                        f"{self.describe()}: a member named by {len(info.name):,} characters (it starts "
                        f"{info.name[:60]!r}); no file of these datasets has such a name"
                    )
                rel = self._relative(info.name)
                if rel is not None and rel.startswith(prefixes):

                    def read(info: tarfile.TarInfo = info) -> bytes:
                        f = tf.extractfile(info)
                        assert f is not None
                        raw.cap = MAX_MEMBER_BYTES  # the member's data (headers stay under the smaller cap)
                        try:
                            return f.read()
                        finally:
                            raw.cap = MAX_TAR_HEADER_BYTES

                    yield Member(rel, info.size, None, read, self.describe())


def _read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> bytes:
    """A zip member's bytes, decompressed no further than its declared size: `ZipFile.read` inflates whatever the
    compressed data holds before cutting it to that size (a member declaring 1,000 bytes may inflate to gigabytes),
    and bzip2 / LZMA members are decompressed a whole read at a time (the datasets' zips use deflate)."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BadValueError(
            f"{source}: {info.filename} is compressed with method {info.compress_type} (these datasets' zips store "
            "or deflate their files); download the archive again"
        )
    with zf.open(info) as f:
        data = f.read(info.file_size)  # at its declared size the CRC is checked: more data than declared fails
    if len(data) != info.file_size:
        raise zipfile.BadZipFile(f"{info.filename} holds {len(data):,} of its {info.file_size:,} bytes")
    return data


class _CappedReads(io.RawIOBase):
    """A file whose single reads are capped: tarfile reads a member's (or a pax header's) declared size in one call,
    so a small compressed archive could otherwise declare a header of gigabytes and have it decompressed. The cap
    is `MAX_TAR_HEADER_BYTES` while tarfile reads headers, `MAX_MEMBER_BYTES` while a member's data is read."""

    def __init__(self, inner: Any, cap: int, name: Path) -> None:
        self._inner, self.cap, self.name = inner, cap, str(name)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return bool(self._inner.seekable())

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._inner.seek(offset, whence))

    def tell(self) -> int:
        return int(self._inner.tell())

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > self.cap:
            what = "file" if self.cap >= MAX_MEMBER_BYTES else "header (pax header or long name)"
            raise BadValueError(f"{self.name}: a record of {size:,} bytes, more than any {what} of these datasets")
        return bytes(self._inner.read(size))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


def _capped_tar(path: Path) -> tarfile.TarFile:
    """`tarfile.open(path, "r:*")` whose reads are capped (`_CappedReads`)."""
    with path.open("rb") as f:
        magic = f.read(6)
    opener: Callable[[Path], Any] = (
        gzip.open if magic.startswith(b"\x1f\x8b") else bz2.open if magic.startswith(b"BZh")
        else lzma.open if magic.startswith(b"\xfd7zXZ\x00") else functools.partial(open, mode="rb")
    )  # fmt: skip
    inner = opener(path)
    try:
        return tarfile.open(fileobj=_CappedReads(inner, MAX_TAR_HEADER_BYTES, path), mode="r:")
    except BaseException:
        inner.close()
        raise


def find_input(
    src: Path,
    archive_names: tuple[str, ...],
    anchor: str,
    marker: str,
    *,
    what: str,
    entry: str | None,
    accept: Callable[[Path], bool] | None = None,
) -> Input:
    """Find one download in `src`: an archive called one of `archive_names`, or a folder `X` up to three levels
    down such that X's path ends with `anchor` (any folder when it is ""), `X/marker` exists and `accept(X)`
    holds (e.g. anchor "VOC2012/", marker "JPEGImages").

    Raises FileNotFoundError with one line naming what is missing and where it is published (`entry`: the
    registry name of the download).
    """
    if not src.is_dir():
        raise MissingFileError(f"--src {src} does not exist or is not a folder")
    for name in archive_names:
        for candidate in (src / name, *sorted(src.glob(f"*/{name}"))):
            if candidate.is_file():
                return Input("zip" if zipfile.is_zipfile(candidate) else "tar", candidate, anchor)
    for depth in range(4):
        stars = "/".join(["*"] * depth)
        pattern = "/".join(p for p in (stars, anchor.rstrip("/")) if p)
        candidates = sorted(src.glob(pattern)) if pattern else [src]
        if depth == 0 and anchor and src.name == anchor.rstrip("/").rsplit("/", 1)[-1]:
            candidates.append(src)  # --src is the extracted folder itself
        for folder in candidates:
            if folder.is_dir() and (folder / marker).exists() and (accept is None or accept(folder)):
                return Input("folder", folder, anchor)
    published = ""
    if entry is not None:
        e = next(x for x in load_registry() if x.name == entry)
        published = f"; it is published at {e.where}" + (f" (otseg weights fetch {e.name} --to {src})" if e.url else "")
    names = " or ".join(archive_names)
    raise MissingFileError(
        f"{what}: missing {names} (or the folder it extracts to, with {anchor}{marker}) in {src}{published}"
    )


def verify_checksum(archive: Input, data_root: Path, progress: bool) -> str:
    """Check an archive against its published digest (registry); returns a note. Results are cached in
    DATA_ROOT/.otseg_prepare_checksums.json by (path, size, mtime), so re-runs do not hash again."""
    if archive.kind == "folder":
        return ""
    entry = find_entry_for_filename(archive.path.name)
    if entry is None or not entry.digests:
        return f"{archive.path.name}: no published checksum, not verified"
    cache_file = data_root / ".otseg_prepare_checksums.json"
    st = archive.path.stat()
    key = f"{archive.path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except (json.JSONDecodeError, OSError):
        cache = {}
    if cache.get(key) == entry.digests:
        return f"{archive.path.name}: checksum verified earlier"
    got = file_digests(archive.path, tuple(entry.digests), progress=progress)
    for kind, want in entry.digests.items():
        if got[kind] != want:
            raise BadValueError(
                f"{archive.path} has {kind} {got[kind]} but the published {entry.filename} has {want}: the download "
                f"is incomplete or another file; download it again from {entry.where} (or pass --skip-checksum)"
            )
    cache[key] = entry.digests
    write_bytes_atomic(cache_file, json.dumps(cache, indent=1, sort_keys=True).encode())
    return f"{archive.path.name}: {' and '.join(entry.digests)} verified"


def registry_entry(name: str) -> RegistryEntry:
    return next(x for x in load_registry() if x.name == name)


# ---- outputs ---------------------------------------------------------------------------------------------


def _tmp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{os.getpid()}.tmp")


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    """`dest` gets `data` through a temporary file renamed into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dest)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_lines_atomic(dest: Path, lines: Iterable[str]) -> None:
    write_bytes_atomic(dest, "".join(f"{line}\n" for line in lines).encode())


def write_list_atomic(dest: Path, stems: Iterable[str], source: str) -> None:
    """A split list (one image stem per line) written atomically, each entry checked first: a plain file stem,
    never a path ('../x', 'a/b'), which the datasets would join to the data root.

    Raises:
        ValueError: one line naming `source` (the list it came from), the entry's position and its value.
    """
    stems = list(stems)
    for i, stem in enumerate(stems):
        if not _STEM.fullmatch(stem) or ".." in stem:
            raise BadValueError(
                f"{source}: entry {i + 1} {stem[:80]!r} is not a plain image stem (no folders, no '..'); the list is "
                "damaged or not the published one: download it again"
            )
    write_lines_atomic(dest, stems)


def write_png_atomic(dest: Path, label: np.ndarray) -> None:
    """A uint8 `(H, W)` label map as a mode-L PNG, written atomically (same bytes for the same array)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), "L").save(buf, format="PNG")
    write_bytes_atomic(dest, buf.getvalue())


def link_or_copy_atomic(src: Path, dest: Path) -> None:
    """`dest` becomes a hard link to `src` (no extra space) or, across file systems, a copy; atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dest)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporaries (".NAME.PID.tmp") an interrupted run left in `folder`; returns how many."""
    if not folder.is_dir():
        return 0
    n = 0
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith(".") and e.name.endswith(".tmp") and e.is_file():
                Path(e.path).unlink(missing_ok=True)
                n += 1
    return n


def existing_names(folder: Path) -> set[str]:
    """Names of the finished files in `folder` (one directory listing; empty if it does not exist)."""
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as it:
        return {e.name for e in it if not e.name.startswith(".")}


# ---- running jobs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One output file: `fn(payload, dest, *args)` writes `dest` (atomically) and returns a result. `cost`: the
    bytes it holds from submission to completion (its payload and what decoding it allocates), for `run_jobs`."""

    dest: Path
    fn: Callable[..., Any]
    payload: Any
    args: tuple[Any, ...] = ()
    cost: int = 0


# What a converter raises on a value of the wrong type or out of range that its checks did not foresee (a JSON
# null where a number belongs, a number too large for C): turned into one line naming the job's file.
UNFORESEEN_VALUE_ERRORS = (OverflowError, TypeError, IndexError, KeyError, AttributeError, RecursionError)


def _run(job: Job) -> Any:
    try:
        return job.fn(job.payload, job.dest, *job.args)
    except UNFORESEEN_VALUE_ERRORS as exc:
        where = next((a for a in job.args if isinstance(a, str)), job.dest.name)
        raise BadValueError(
            f"{where}: cannot convert it ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); the download "
            "holds a value of the wrong type or out of range: download it again"
        ) from None


def run_jobs(jobs: Iterable[Job], workers: int, desc: str, progress: bool, total: int | None = None) -> list[Any]:
    """Run `jobs` (in this process with workers=0, else in a pool of `workers` processes, with at most
    `MAX_BYTES_IN_FLIGHT` of job costs submitted at a time, one job whatever its cost, so that memory stays bounded
    however many workers and however large the members) with a tqdm bar; returns the results in completion
    order."""
    results: list[Any] = []
    bar = tqdm(total=total, desc=desc, unit="file", disable=not progress, leave=True)
    try:
        if workers == 0:
            for job in jobs:
                results.append(_run(job))
                bar.update(1)
            return results
        pool = ProcessPoolExecutor(max_workers=workers)
        try:
            pending: dict[Future[Any], int] = {}  # submitted job -> its cost
            for job in jobs:
                cost = max(job.cost, 1)
                while pending and sum(pending.values()) + cost > MAX_BYTES_IN_FLIGHT:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        del pending[fut]
                        results.append(fut.result())
                        bar.update(1)
                pending[pool.submit(_run, job)] = cost
            for fut in pending:
                results.append(fut.result())
                bar.update(1)
        except BaseException:
            # An error or Ctrl+C: drop the queued jobs instead of finishing them (finished files stay valid).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return results
    finally:
        bar.close()


def copy_job(member: Member, dest: Path) -> Job:
    """A job writing `member` to `dest`: a hard link/copy for folder inputs, the bytes for archive members.

    A folder member that is a symbolic link is followed only to a file inside its download folder, and the output
    is always that file (hard-linked or copied), never a link: `os.link` on a link would recreate the link, and a
    link out of the download would bring any file of the machine into the data root.
    """
    if member.path is not None:
        return Job(dest, _link_payload, link_source(member))
    data = member.read()
    return Job(dest, _write_payload, data, cost=len(data))


def link_source(member: Member) -> Path:
    """The file a folder member's output is linked to or copied from: itself, or for a symbolic link its target,
    which must lie inside the download folder (`member.source`).

    Raises:
        ValueError: a link out of the download folder, or a broken link; one line naming the member and target.
    """
    assert member.path is not None
    if not member.path.is_symlink():
        return member.path
    root = Path(member.source).resolve()
    try:
        target = member.path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing target, or a loop of links
        raise BadValueError(
            f"{member.source}: {member.rel} is a symbolic link to {os.readlink(member.path)}, which does not exist; "
            "replace it by the file"
        ) from None
    if not target.is_relative_to(root) or not target.is_file():
        raise BadValueError(
            f"{member.source}: {member.rel} is a symbolic link to {target}, outside the download folder {root}; "
            "prepare follows no link out of it: replace the link by the file (e.g. cp -L), or give --src the "
            "folder that holds the files"
        )
    return target


def _link_payload(src: Path, dest: Path) -> int:
    if dest.exists() and os.path.samefile(src, dest):
        return 0
    link_or_copy_atomic(src, dest)
    return 1


def _write_payload(data: bytes, dest: Path) -> int:
    write_bytes_atomic(dest, data)
    return 1


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"
