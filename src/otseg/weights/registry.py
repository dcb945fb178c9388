"""The registry of downloadable files (`registry.json`, data): reading it, hashing files, identifying a file.

`identify(path)` says which registry entry a file on disk is, or why it is none (wrong size, wrong digest, not
a CLIP archive, not a NumPy array), reading only bytes: zip directories, `.npy` headers and digests. Nothing in
the file is unpickled or executed.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm import tqdm

from otseg.errors import BadValueError, MissingFileError, UnknownNameError

__all__ = [
    "DIGEST_KINDS",
    "Identification",
    "RegistryEntry",
    "file_digests",
    "find_entry",
    "find_entry_for_filename",
    "identify",
    "load_registry",
]

DIGEST_KINDS = ("sha256", "sha1", "md5")
KINDS = ("clip", "embeddings", "checkpoint", "dataset")
_HEX_LENGTHS = {"sha256": 64, "sha1": 40, "md5": 32}
_CHUNK = 1 << 20
# The largest size or max_size a registry may declare (the largest published file, COCO train2017.zip, is 18 GB).
MAX_DOWNLOAD_BYTES = 1 << 40
_MAX_REGISTRY_BYTES = 1 << 20  # the packaged registry is a few KB
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class RegistryEntry:
    """One downloadable file. `url` is a direct download (None: only `page`, for a person to follow).

    `size` is the exact size in bytes where it is published; `max_size` an upper bound where it is not (the
    published size rounded up with a margin), so that a download never writes more than the file can be.
    """

    name: str
    kind: str
    description: str
    filename: str | None = None
    url: str | None = None
    page: str | None = None
    size: int | None = None
    max_size: int | None = None
    sha256: str | None = None
    sha1: str | None = None
    md5: str | None = None

    def __post_init__(self) -> None:
        for key in ("name", "kind", "description"):
            if not isinstance(getattr(self, key), str):
                raise BadValueError(f"{key} {getattr(self, key)!r} must be a string")
        for key in ("filename", "url", "page", *DIGEST_KINDS):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise BadValueError(f"{key} {value!r} must be a string")
        for key in ("size", "max_size"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise BadValueError(f"{key} {value!r} must be a whole number of bytes")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", self.name):
            raise BadValueError(f"registry entry name {self.name!r}: use lower-case letters, digits, '-' and '.'")
        if self.kind not in KINDS:
            raise BadValueError(f"registry entry {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.url is None and self.page is None:
            raise BadValueError(f"registry entry {self.name}: needs a url or a page")
        for key in ("size", "max_size"):
            value = getattr(self, key)
            if value is not None and not 0 < value <= MAX_DOWNLOAD_BYTES:
                raise BadValueError(
                    f"registry entry {self.name}: {key} {value} must be between 1 and {MAX_DOWNLOAD_BYTES:,}"
                )
        for key in ("url", "page"):
            value = getattr(self, key)
            if value is not None and not re.fullmatch(r"https?://[^\s/?#]+(?:[/?#]\S*)?", value):
                raise BadValueError(
                    f"registry entry {self.name}: {key} {value!r} is not an http:// or https:// address"
                )
        if self.filename is not None and (
            not _FILENAME.fullmatch(self.filename) or self.filename in (".", "..") or len(self.filename) > 255
        ):
            raise BadValueError(
                f"registry entry {self.name}: filename {self.filename!r} is not a plain file name (letters, digits, "
                "'.', '_', '-'; no folders)"
            )
        for kind in DIGEST_KINDS:
            value = getattr(self, kind)
            if value is not None and not re.fullmatch(f"[0-9a-f]{{{_HEX_LENGTHS[kind]}}}", value):
                raise BadValueError(
                    f"registry entry {self.name}: {kind} {value!r} is not {_HEX_LENGTHS[kind]} hex digits"
                )

    @property
    def digests(self) -> dict[str, str]:
        """The known digests, strongest first: {"sha256": hex, ...} (empty when none is published)."""
        return {k: getattr(self, k) for k in DIGEST_KINDS if getattr(self, k) is not None}

    @property
    def where(self) -> str:
        """Where to get it, in words."""
        if self.url:
            return self.url
        return f"{self.page} (in a browser; no direct URL)"


def load_registry(path: str | Path | None = None) -> tuple[RegistryEntry, ...]:
    """The entries of `path` (default: the packaged `registry.json`), validated.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is too large, not JSON, or an entry is invalid; one line naming the file, the entry
            (`files[i]`, its name) and the value.
    """
    if path is None:
        text = resources.files("otseg.weights").joinpath("registry.json").read_text(encoding="utf-8")
        source = "otseg/weights/registry.json"
    else:
        source = str(path)
        try:
            if Path(path).stat().st_size > _MAX_REGISTRY_BYTES:
                raise BadValueError(
                    f"registry file {path} has {Path(path).stat().st_size:,} bytes, more than a registry can "
                    f"({_MAX_REGISTRY_BYTES:,}); give the registry JSON file"
                )
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MissingFileError(f"registry file {path} does not exist") from None
        except UnicodeDecodeError as exc:
            raise BadValueError(f"registry file {path} is not UTF-8 text (byte offset {exc.start})") from None
        except IsADirectoryError:
            raise BadValueError(f"registry file {path} is a folder; give the registry JSON file") from None
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, an integer over Python's 4,300 digits
        raise BadValueError(f"registry file {source} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadValueError(f"registry file {source}: JSON nested too deeply to be a registry") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise BadValueError(f'registry file {source}: expected {{"files": [...]}}')
    fields = set(RegistryEntry.__dataclass_fields__)
    entries = []
    for i, item in enumerate(data["files"]):
        where = f"registry file {source}: files[{i}]"
        if not isinstance(item, dict):
            raise BadValueError(f"{where} is {_short(item)}, not an object with name, kind, url...")
        where += f" ({_short(item.get('name', '?'))})"
        if set(item) - fields:
            raise BadValueError(f"{where} has unknown fields {sorted(set(item) - fields)}; known: {sorted(fields)}")
        missing = sorted(k for k in ("name", "kind", "description") if k not in item)
        if missing:
            raise BadValueError(f"{where} has no {', '.join(missing)}")
        try:
            entries.append(RegistryEntry(**item))
        except ValueError as exc:
            message = str(exc).removeprefix(f"registry entry {item.get('name')}: ")
            raise BadValueError(f"{where}: {message}") from None
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise BadValueError(
            f"registry file {source}: duplicate names {sorted({n for n in names if names.count(n) > 1})}"
        )
    return tuple(entries)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def find_entry(name: str, entries: tuple[RegistryEntry, ...] | None = None) -> RegistryEntry:
    """The entry called `name` (or whose filename is `name`)."""
    entries = load_registry() if entries is None else entries
    for entry in entries:
        if name in (entry.name, entry.filename):
            return entry
    raise UnknownNameError(
        f"no registry entry {name!r}; otseg weights list shows the names ({', '.join(e.name for e in entries)})"
    )


def find_entry_for_filename(filename: str, entries: tuple[RegistryEntry, ...] | None = None) -> RegistryEntry | None:
    """The entry whose published file name is `filename`, or None."""
    entries = load_registry() if entries is None else entries
    return next((e for e in entries if e.filename == filename), None)


def file_digests(path: str | Path, kinds: tuple[str, ...] = DIGEST_KINDS, progress: bool = False) -> dict[str, str]:
    """Hex digests of `path`'s bytes, one pass for all `kinds` (memory: one 1 MiB buffer)."""
    path = Path(path)
    hashes = {k: hashlib.new(k) for k in kinds}
    bar = None
    if progress:
        bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"checksum {path.name}", leave=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashes.values():
                h.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return {k: h.hexdigest() for k, h in hashes.items()}


@dataclass(frozen=True)
class Identification:
    """What `identify` found: `entry` is the matching registry entry (None: no match, `reason` says why)."""

    path: Path
    entry: RegistryEntry | None
    reason: str

    @property
    def matched(self) -> bool:
        return self.entry is not None


def _describe_content(path: Path) -> tuple[str, str | None]:
    """(a short description of what the file looks like, the registry kind it could be or None)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x93NUMPY"):
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            except ValueError as exc:
                return f"a NumPy file with an unreadable header ({exc})", None
        return f"a NumPy array of shape {shape} and dtype {dtype}", "embeddings"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            return f"a damaged zip file ({exc})", None
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            torchscript = any(n.endswith("/constants.pkl") or "/code/" in n for n in names)
            if torchscript:
                return "a TorchScript archive (the format of OpenAI's ViT-B-16.pt)", "clip"
            return "a torch.save zip archive (a checkpoint or state dict, not a TorchScript CLIP archive)", "checkpoint"
        return f"a zip archive of {len(names)} entries (not a PyTorch archive)", "dataset"
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
        return "a legacy pickle file (an old-style torch.save checkpoint)", "checkpoint"
    if head[:2] == b"\x1f\x8b":
        return "a gzip file", "dataset"
    return "not a zip, NumPy or pickle file", None


def identify(
    path: str | Path, entries: tuple[RegistryEntry, ...] | None = None, progress: bool = False
) -> Identification:
    """Which registry entry `path` is: by size and digest; otherwise the reason it is none of them."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist or is not a file")
    entries = load_registry() if entries is None else entries
    size = path.stat().st_size
    checkable = [e for e in entries if e.digests]
    candidates = [e for e in checkable if e.size is None or e.size == size]
    digests = file_digests(path, DIGEST_KINDS, progress=progress) if candidates else {}
    for entry in candidates:
        if all(digests[k] == v for k, v in entry.digests.items()):
            return Identification(path, entry, f"{entry.filename or entry.name}: size and {_kinds(entry)} match")

    looks, kind = _describe_content(path)
    same_name = find_entry_for_filename(path.name, entries)
    target = same_name
    if target is None and kind is not None:
        of_kind = [e for e in checkable if e.kind == kind]
        target = of_kind[0] if len(of_kind) == 1 else None
    if target is not None and target.kind == "clip" and kind != "clip":
        return Identification(path, None, f"not a CLIP archive: {path.name} is {looks}; {target.filename} is a "
                              f"TorchScript zip archive ({target.where})")  # fmt: skip
    if target is not None and target.size is not None and target.size != size:
        return Identification(path, None, f"wrong size: {path.name} has {size:,} bytes, {target.filename} has "
                              f"{target.size:,} ({looks}); download it again from {target.where}")  # fmt: skip
    if target is not None and target.digests:
        k, v = next(iter(target.digests.items()))
        got = digests.get(k) or file_digests(path, (k,))[k]
        return Identification(path, None, f"wrong digest: {path.name} has {k} {got}, {target.filename} has {v} "
                              f"({looks}; truncated or modified?); download it again from {target.where}")  # fmt: skip
    if target is not None:
        return Identification(path, None, f"{path.name} is named like {target.name}, for which no checksum is "
                              f"published, so it cannot be verified ({looks})")  # fmt: skip
    if kind == "checkpoint":
        return Identification(path, None, f"{path.name} is {looks}; the reference's released checkpoints have no "
                              "published checksum, so no checkpoint can be identified (load it with --preset: "
                              "otseg convert / otseg eval check its keys)")  # fmt: skip
    return Identification(path, None, f"{path.name} ({size:,} bytes) is {looks}: it matches no known file "
                          "(otseg weights list shows them)")  # fmt: skip


def _kinds(entry: RegistryEntry) -> str:
    return " and ".join(entry.digests)
