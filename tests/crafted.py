"""Small hostile files for the reader tests: torch zips and TorchScript archives whose tensors are views that ask
for far more memory than the file stores, or whose records are compressed. Built with pickle itself (the tensor
records name the same globals torch writes), so the bytes are what a crafted file would hold."""

from __future__ import annotations

import collections
import io
import pickle
import resource
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import torch


class Storage:
    """Pickles as a persistent storage record `("storage", torch.<kind>, key, "cpu", numel)`."""

    def __init__(self, key: str, numel: int, kind: str = "FloatStorage") -> None:
        self.key, self.numel, self.kind = key, numel, kind


class View:
    """Pickles as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`: a tensor record."""

    def __init__(self, storage: Storage, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0) -> None:
        self.storage, self.size, self.stride, self.offset = storage, size, stride, offset

    def __reduce__(self) -> tuple[Any, ...]:
        args: tuple[Any, ...] = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Storage):
            return ("storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel)
        return None


# A module named `__torch__` so that pickle writes `GLOBAL __torch__ Module`, as TorchScript archives do.
_TORCH_MODULE = types.ModuleType("__torch__")


class Module:
    """A TorchScript module record: its attributes are pickled as its state."""

    def __init__(self, **attrs: Any) -> None:
        self.attrs = attrs

    def __reduce__(self) -> tuple[Any, ...]:
        return (Module, (), self.attrs)

    def __setstate__(self, state: Any) -> None:  # pragma: no cover - only the reader under test unpickles
        self.attrs = state


Module.__module__ = "__torch__"
_TORCH_MODULE.Module = Module  # type: ignore[attr-defined]
sys.modules.setdefault("__torch__", _TORCH_MODULE)


def pickled(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def torch_zip(path: Path, obj: Any, records: dict[str, bytes], compress: bool = False) -> Path:
    """A file in torch.save's zip layout holding `obj` (with `Storage`/`View` records) and the storage `records`."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickled(obj))
        zf.writestr("archive/byteorder", b"little")
        for key, data in records.items():
            zf.writestr(zipfile.ZipInfo(f"archive/data/{key}"), data, compress_type=method)
        zf.writestr("archive/version", b"3\n")
    return path


def torchscript_zip(path: Path, top: Module, records: dict[str, bytes]) -> Path:
    """A TorchScript-shaped archive whose data.pkl is the module tree `top`."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("clip/data.pkl", pickled(top))
        zf.writestr("clip/constants.pkl", pickle.dumps(()))
        zf.writestr("clip/code/__torch__.py", "class Module(Module):\n  pass\n")
        for key, data in records.items():
            zf.writestr(zipfile.ZipInfo(f"clip/data/{key}"), data, compress_type=zipfile.ZIP_STORED)
        zf.writestr("clip/version", b"3\n")
    return path


def address_space_bytes() -> int:
    """This process's current address space (VmSize), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def limit_memory_growth(extra_bytes: int) -> None:
    """Let this process (a child started by a test) grow by at most `extra_bytes` of address space from now: an
    allocation beyond raises MemoryError, so a reader that sizes memory from a file's claims fails loudly."""
    limit = address_space_bytes() + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


TESTS = Path(__file__).resolve().parent  # tests/, where this module lives


def run_bounded(code: str, extra_bytes: int = 512 * 2**20, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh Python whose address space may grow by `extra_bytes` once otseg and torch are imported
    (`limit_memory_growth`); returns the finished process (stdout, stderr, returncode)."""
    preamble = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
        "import torch, numpy, otseg.model_files.open_model, otseg.formats.openai_clip, otseg.formats.class_embeddings\n"
        f"from crafted import limit_memory_growth; limit_memory_growth({extra_bytes})\n"
    )
    return subprocess.run(
        [sys.executable, "-c", preamble + code], capture_output=True, text=True, timeout=timeout, check=False
    )
