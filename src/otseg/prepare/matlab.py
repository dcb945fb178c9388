"""The sizes a MATLAB v5 `.mat` file declares, checked before anything is decompressed or allocated.

scipy's `loadmat` decompresses each variable in full and allocates every array its header declares: a 1.3 KB
file holding a zlib-compressed 20000 x 20000 array costs gigabytes. `check_mat_sizes` walks the same headers
(array flags, dimensions, name; struct fields and cell elements, recursively) on a stream that decompresses only
as far as it reads, and refuses, naming the variable path (`GTcls.Segmentation`) and its dimensions, any array
over the limits; the data of the arrays that pass is decompressed and discarded in small chunks, so the whole
file's decompressed size is known (and bounded) before scipy reads it.

Format: the MAT-File Format reference (MathWorks, "MAT-File Level 5"): a 128-byte header, then data elements
(an 8-byte tag of type and byte count, or a 4-byte "small element" tag), variables being `miMATRIX` elements,
optionally wrapped in `miCOMPRESSED` (zlib) elements.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

from otseg.errors import BadValueError

__all__ = ["MatLimits", "MatTooLarge", "check_mat_sizes"]

_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED = 1, 5, 6, 14, 15
_MX_CELL, _MX_STRUCT, _MX_OBJECT, _MX_CHAR, _MX_SPARSE = 1, 2, 3, 4, 5
_NUMERIC = frozenset(range(6, 16))  # double, single, int8..uint64
_CHUNK = 1 << 20


@dataclass(frozen=True)
class MatLimits:
    """What one `.mat` file may declare."""

    max_side: int  # any dimension of an array
    max_elements: int  # elements of one numeric array (pixels of a label map)
    max_container: int = 4096  # elements of one cell or struct array
    max_fields: int = 256  # fields of one struct
    max_depth: int = 8  # structs and cells nested in each other
    max_arrays: int = 65_536  # arrays of the whole file, nested ones included (an SBD file holds about 25)

    @property
    def max_decompressed(self) -> int:
        """Decompressed bytes of a whole file: one largest array of doubles, plus room for small ones."""
        return 8 * self.max_elements + (1 << 20)


class MatTooLarge(BadValueError):
    """The file declares more than the limits allow (a well-formed header, an impossible annotation)."""


_TooLarge = MatTooLarge


class _Stream:
    """Bytes read from a `.mat` element, decompressed on demand (with a budget) when the element is compressed."""

    def __init__(self, data: memoryview, compressed: bool, budget: list[int], endian: str) -> None:
        """`budget`: [decompressed bytes left, arrays left], shared by the file's streams."""
        self._data, self._compressed, self._budget, self.endian = data, compressed, budget, endian
        self._inflate = zlib.decompressobj() if compressed else None
        self._buffer = b""
        self._start = 0  # where the unread part of `_buffer` starts (slicing the buffer per read would copy it)
        self._in = 0  # position in `data`
        self.pos = 0  # bytes delivered so far

    def _fill(self, want: int) -> None:
        assert self._inflate is not None
        if len(self._buffer) - self._start >= want:
            return
        self._buffer, self._start = self._buffer[self._start :], 0
        while len(self._buffer) < want:
            room = min(_CHUNK, self._budget[0] + 1)
            if self._inflate.unconsumed_tail:
                piece = self._inflate.decompress(self._inflate.unconsumed_tail, room)
            elif self._in < len(self._data):
                chunk = bytes(self._data[self._in : self._in + _CHUNK])
                self._in += len(chunk)
                piece = self._inflate.decompress(chunk, room)
            else:
                break
            self._budget[0] -= len(piece)
            if self._budget[0] < 0:
                raise _TooLarge("decompresses beyond the limit")
            self._buffer += piece

    def read(self, n: int) -> bytes:
        if self._inflate is None:
            out = bytes(self._data[self.pos : self.pos + n])
        else:
            self._fill(n)
            out = self._buffer[self._start : self._start + n]
            self._start += len(out)
        if len(out) < n:
            raise BadValueError("the file ends inside a data element (truncated)")
        self.pos += n
        return out

    def count_array(self, path: str) -> None:
        """One more array in the file: each costs scipy an object and this walk a step, whatever its size."""
        self._budget[1] -= 1
        if self._budget[1] < 0:
            raise _TooLarge(f"{path or 'the file'}: more arrays than the limit")

    def skip(self, n: int) -> None:
        while n > 0:
            step = min(n, _CHUNK)
            self.read(step)
            n -= step

    def tag(self) -> tuple[int, int, bytes | None]:
        """(type, byte count, data of a small element or None)."""
        raw = self.read(8)
        kind, count = struct.unpack(self.endian + "II", raw)
        if kind >> 16:  # small data element: count in the upper 16 bits, the data in the tag's last 4 bytes
            return kind & 0xFFFF, kind >> 16, raw[4 : 4 + (kind >> 16)]
        return kind, count, None

    def element(self, max_bytes: int) -> tuple[int, bytes]:
        """A (small) sub-element's type and data, padded reads included."""
        kind, count, small = self.tag()
        if small is not None:
            return kind, small
        if count > max_bytes:
            raise BadValueError(f"a header element of {count:,} bytes")
        data = self.read(count)
        self.skip(-count % 8)
        return kind, data


def _ints(kind: int, data: bytes, endian: str) -> list[int]:
    if kind not in (_MI_INT32, _MI_UINT32) or len(data) % 4:
        raise BadValueError("dimensions are not 32-bit integers")
    return list(struct.unpack(f"{endian}{len(data) // 4}{'i' if kind == _MI_INT32 else 'I'}", data))


def _matrix(stream: _Stream, nbytes: int, path: str, limits: MatLimits, depth: int) -> None:
    """Walk one miMATRIX element of `nbytes` bytes (its tag already read), checking what it declares."""
    stream.count_array(path)
    if nbytes == 0:  # an empty matrix (e.g. an empty cell)
        return
    end = stream.pos + nbytes
    kind, flags = stream.element(64)
    if kind != _MI_UINT32 or len(flags) < 8:
        raise BadValueError(f"{path}: malformed array flags")
    mx_class = struct.unpack(stream.endian + "I", flags[:4])[0] & 0xFF
    dims = _ints(*stream.element(4 * 64), stream.endian)
    _, name_bytes = stream.element(1024)
    name = name_bytes.decode("latin-1") or path
    where = path if depth else name
    shape = "x".join(str(d) for d in dims)
    if any(d < 0 for d in dims) or not dims:
        raise BadValueError(f"{where}: dimensions {dims}")
    count = math.prod(dims)
    if max(dims) > limits.max_side:
        raise _TooLarge(f"{where} is {shape}: a side over {limits.max_side:,}")
    if mx_class in _NUMERIC or mx_class == _MX_CHAR:
        if count > limits.max_elements:
            raise _TooLarge(f"{where} is {shape} = {count:,} elements, over the limit of {limits.max_elements:,}")
    elif mx_class == _MX_SPARSE:
        nzmax = struct.unpack(stream.endian + "I", flags[4:8])[0]
        if nzmax > limits.max_elements:
            raise _TooLarge(f"{where} is a sparse {shape} with {nzmax:,} entries, over {limits.max_elements:,}")
    elif mx_class in (_MX_CELL, _MX_STRUCT, _MX_OBJECT):
        if count > limits.max_container:
            raise _TooLarge(f"{where} is a {shape} array of cells or structs, over {limits.max_container:,}")
        if depth >= limits.max_depth:
            raise _TooLarge(f"{where}: cells and structs nested more than {limits.max_depth} deep")
        fields = [""]
        if mx_class == _MX_OBJECT:
            stream.element(1024)  # the class name
        if mx_class != _MX_CELL:
            kind, raw = stream.element(8)
            length = _ints(kind, raw, stream.endian)[0] if raw else 0
            if not 0 < length <= 64:  # MATLAB's field names are at most 63 characters
                raise BadValueError(f"{where}: struct field names of {length} bytes")
            kind, names = stream.element(length * limits.max_fields)
            if len(names) % length:
                raise BadValueError(f"{where}: malformed struct field names")
            if len(names) // length > limits.max_fields:
                raise _TooLarge(f"{where}: a struct of {len(names) // length:,} fields, over {limits.max_fields}")
            fields = [names[i : i + length].split(b"\0")[0].decode("latin-1") for i in range(0, len(names), length)]
        for index in range(count):
            for field in fields:
                kind, size, _ = stream.tag()
                if kind != _MI_MATRIX:
                    raise BadValueError(f"{where}: an element of type {kind} inside a cell or struct")
                label = f"{where}.{field}" if field else f"{where}{{{index}}}"
                _matrix(stream, size, label, limits, depth + 1)
    else:
        raise BadValueError(f"{where}: MATLAB class {mx_class} (function handles and opaque objects are not data)")
    if stream.pos > end:
        raise BadValueError(f"{where}: its parts are longer than the element")
    stream.skip(end - stream.pos)  # the array's data: decompressed (counted) and dropped


def check_mat_sizes(data: bytes, limits: MatLimits) -> int:
    """Refuse a MATLAB v5 file whose headers declare arrays over `limits`, or whose data decompresses to more than
    `limits.max_decompressed` bytes, before scipy reads it. Returns the bytes its variables decompress to (the
    memory scipy will need for them, about).

    Raises:
        MatTooLarge: one line without the file's name (the caller adds it): the variable path and what it declares.
        ValueError: the file is not a well-formed MATLAB 5 file.
    """
    if len(data) < 128:
        raise BadValueError("not a MATLAB file (shorter than its 128-byte header)")
    order = data[126:128]
    if order not in (b"IM", b"MI"):
        raise BadValueError("not a MATLAB 5 file (no endian indicator; MATLAB 7.3 / HDF5 files are not read)")
    endian = "<" if order == b"IM" else ">"
    view = memoryview(data)
    budget = [limits.max_decompressed, limits.max_arrays]
    pos = 128
    try:
        while pos + 8 <= len(data):
            kind, nbytes = struct.unpack(endian + "II", data[pos : pos + 8])
            body = view[pos + 8 : pos + 8 + nbytes]
            if len(body) < nbytes:
                raise BadValueError("the file ends inside a variable (truncated)")
            if kind == _MI_COMPRESSED:
                stream = _Stream(body, True, budget, endian)
                inner, size, _ = stream.tag()
                if inner != _MI_MATRIX:
                    raise BadValueError(f"a compressed element of type {inner}")
                _matrix(stream, size, "", limits, 0)
            elif kind == _MI_MATRIX:
                _matrix(_Stream(body, False, budget, endian), nbytes, "", limits, 0)
            else:
                raise BadValueError(f"a top-level data element of type {kind}")
            pos += 8 + nbytes + (-nbytes % 8 if kind != _MI_COMPRESSED else 0)
    except MatTooLarge as e:
        what = str(e)
        if what == "decompresses beyond the limit":
            what = f"its data decompresses to more than {limits.max_decompressed:,} bytes"
        elif what.endswith(": more arrays than the limit"):
            what = f"{what[: -len(': more arrays than the limit')]}: more than {limits.max_arrays:,} arrays in one file"
        raise MatTooLarge(f"{what}; not a dataset annotation") from None
    except (struct.error, zlib.error, UnicodeDecodeError, IndexError) as e:
        raise BadValueError(f"a malformed MATLAB header ({e})") from None
    return limits.max_decompressed - budget[0] + len(data)
