"""Reading the tensors of a TorchScript archive (OpenAI's `ViT-B-16.pt`) without running any of its code.

A TorchScript archive is a zip holding `<root>/data.pkl` (the module tree, pickled), `<root>/data/<key>` (the raw
bytes of each tensor storage), `<root>/code/` (the TorchScript source of every module type) and a few other
records. `torch.jit.load` compiles and runs that code, so a crafted file can do anything. This reader instead
unpickles `data.pkl` with an unpickler that only knows how to rebuild tensors: module objects become inert
records of their attributes, storages are read from the zip, and any other global (`os.system`, `builtins.eval`,
...) is refused. The source under `code/` is only read as text, for the lists of parameter and buffer names
(`__parameters__ = [...]`, `__buffers__ = [...]`) that decide which tensor attributes belong in the state dict.

Memory is bounded by the archive's size: compressed tensor records are refused, the module tree and the sources
have a size cap, and every tensor is checked against its storage (`otseg.formats.stored_tensors`) before it is
returned, so a view that repeats 4 stored bytes into a 100000 x 100000 tensor is refused before any conversion.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from otseg.errors import BadValueError
from otseg.formats.stored_tensors import check_stored_tensors

__all__ = ["TorchScriptReadError", "is_torchscript_archive", "read_torchscript_state_dict"]

# The storage classes a pickled tensor may name, and the element type each stands for.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_MAX_PICKLE_BYTES = 64 * 2**20  # the module tree of ViT-B/16 pickles to well under 1 MB
_MAX_CODE_BYTES = 64 * 2**20  # all of `code/` together (ViT-B/16's: about 100 KB)
_PARAMS_RE = re.compile(r"^class (\w+)\(Module\):\n  __parameters__ = \[(.*?)\]\n  __buffers__ = \[(.*?)\]", re.M)
_NAME_RE = re.compile(r'"(\w+)"')


class TorchScriptReadError(BadValueError):
    """The archive is not a TorchScript archive this reader can take, or it asks for something it refuses."""


class _ScriptObject:
    """An inert stand-in for a pickled TorchScript module: it only keeps the attributes it is given."""

    __slots__ = ("attrs", "type_name")

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name
        self.attrs: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.attrs = dict(state)


def _script_type(type_name: str) -> type[_ScriptObject]:
    """A class whose instances are `_ScriptObject`s remembering `type_name` (pickle's NEWOBJ calls cls.__new__)."""

    class _Typed(_ScriptObject):
        __slots__ = ()

        def __new__(cls, *args: Any, **kwargs: Any) -> _Typed:
            obj = super().__new__(cls)  # the arguments are the pickled module's: never used
            _ScriptObject.__init__(obj, type_name)
            return obj

        def __init__(self, *args: Any, **kwargs: Any) -> None:  # a REDUCE (cls(*args)): __new__ did the work
            pass

    return _Typed


class _StorageType:
    """What a `torch.<X>Storage` global unpickles to: only its element type."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(
    storage: Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_ignored: Any
) -> Tensor:
    """Our own `torch._utils._rebuild_tensor_v2`: a view of a flat storage tensor (requires_grad and hooks
    dropped)."""
    if not isinstance(storage, Tensor):
        raise pickle.UnpicklingError("a tensor record without a storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles the module tree of `data.pkl`, knowing only the globals that rebuild tensors."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, source: Path) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._root = root
        self._source = source
        self._storages: dict[str, Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module.startswith("__torch__.") or module == "__torch__":
            return _script_type(f"{module}.{name}")
        raise pickle.UnpicklingError(f"refused global {module}.{name} (only tensor records are read)")

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent record {str(pid)[:60]!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise pickle.UnpicklingError("malformed storage record")
        if key not in self._storages:
            name = f"{self._root}/data/{key}"
            try:
                info = self._archive.getinfo(name)
            except KeyError:
                raise pickle.UnpicklingError(f"storage record {name} is missing from the archive") from None
            if info.compress_type != zipfile.ZIP_STORED:
                # torch stores tensor records uncompressed; a compressed one could inflate without bound.
                raise pickle.UnpicklingError(f"storage record {name} is compressed (torch never writes that)")
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if info.file_size != numel * itemsize:
                raise pickle.UnpicklingError(
                    f"storage {name} holds {info.file_size} bytes, its record says {numel} x {itemsize}"
                )
            raw = bytearray(self._archive.read(name))
            flat = torch.frombuffer(raw, dtype=storage_type.dtype) if raw else torch.empty(0, dtype=storage_type.dtype)
            self._storages[key] = flat
        return self._storages[key]


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """TorchScript archives are zips with `<root>/code/` and `<root>/constants.pkl`; torch.save zips have neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def _declared_names(archive: zipfile.ZipFile, root: str) -> dict[str, tuple[set[str], set[str]]]:
    """{qualified type name: (parameter names, buffer names)} from the `code/` sources, read as text only."""
    out: dict[str, tuple[set[str], set[str]]] = {}
    prefix = f"{root}/code/"
    sources = [i for i in archive.infolist() if i.filename.startswith(prefix) and i.filename.endswith(".py")]
    if sum(i.file_size for i in sources) > _MAX_CODE_BYTES:
        raise TorchScriptReadError(f"its {prefix} sources declare more than {_MAX_CODE_BYTES:,} bytes")
    for info in sources:
        name = info.filename
        module = name[len(prefix) : -len(".py")].replace("/", ".")
        text = archive.read(name).decode("utf-8", errors="replace")
        for match in _PARAMS_RE.finditer(text):
            params = set(_NAME_RE.findall(match.group(2)))
            buffers = set(_NAME_RE.findall(match.group(3)))
            out[f"{module}.{match.group(1)}"] = (params, buffers)
    return out


def _walk(
    obj: _ScriptObject, prefix: str, declared: dict[str, tuple[set[str], set[str]]], seen: set[int]
) -> Iterator[tuple[str, Tensor]]:
    """The state-dict entries of a module tree: parameters and buffers of each module, then its submodules."""
    if id(obj) in seen:  # a cyclic or shared reference cannot occur in a module tree
        raise pickle.UnpicklingError("the module tree refers back to itself")
    seen.add(id(obj))
    names = declared.get(obj.type_name)
    for key, value in obj.attrs.items():
        if isinstance(value, Tensor) and (names is None or key in names[0] or key in names[1]):
            yield prefix + key, value
    for key, value in obj.attrs.items():
        if isinstance(value, _ScriptObject):
            yield from _walk(value, f"{prefix}{key}.", declared, seen)


def read_torchscript_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The parameters and buffers of a TorchScript archive, as `torch.jit.load(path).state_dict()` gives them
    (dtypes as stored), read without executing anything in the file.

    Raises:
        TorchScriptReadError: one line naming the file, for a file that is not such an archive, holds a
            big-endian or malformed record, or names any global other than the tensor-rebuilding ones.
    """
    source = Path(path)
    try:
        with zipfile.ZipFile(source) as archive:
            pkls = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if pkls and archive.getinfo(pkls[0]).file_size > _MAX_PICKLE_BYTES:
                raise TorchScriptReadError(f"{source}: its data.pkl is implausibly large for a module tree")
            if not pkls:
                raise TorchScriptReadError(f"{source}: not a TorchScript archive (no <name>/data.pkl inside the zip)")
            root = pkls[0].split("/", 1)[0]
            order = f"{root}/byteorder"
            if order in archive.namelist() and archive.getinfo(order).file_size > 16:
                raise TorchScriptReadError(f"{source}: its byteorder record is not a byte order")
            if order in archive.namelist() and archive.read(order).strip() not in (b"little", b""):
                raise TorchScriptReadError(f"{source}: big-endian TorchScript archives are not supported")
            unpickler = _RestrictedUnpickler(archive.read(pkls[0]), archive, root, source)
            top = unpickler.load()
            declared = _declared_names(archive, root)
    except TorchScriptReadError as err:
        raise TorchScriptReadError(str(err) if str(err).startswith(str(source)) else f"{source}: {err}") from None
    # RuntimeError: torch.as_strided on a record whose sizes/strides reach past its storage.
    except (
        pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError, KeyError, RuntimeError,
        RecursionError,
    ) as err:  # fmt: skip
        raise TorchScriptReadError(f"{source}: cannot read it as a TorchScript archive: {err}") from None
    if not isinstance(top, _ScriptObject):
        raise TorchScriptReadError(f"{source}: data.pkl does not hold a module (got {type(top).__name__})")
    try:
        state = dict(_walk(top, "", declared, set()))
    except pickle.UnpicklingError as err:
        raise TorchScriptReadError(f"{source}: {err}") from None
    except RecursionError:
        raise TorchScriptReadError(f"{source}: its module tree is nested too deep for a model") from None
    try:
        check_stored_tensors(state, str(source))
    except ValueError as err:
        raise TorchScriptReadError(str(err)) from None
    return state
