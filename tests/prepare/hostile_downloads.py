"""Small hostile stand-ins for the official downloads: files that declare (or decompress to) far more than they
hold, written without ever holding the large data in memory."""

from __future__ import annotations

import struct
import tarfile
import zlib
from pathlib import Path

__all__ = [
    "mat_with_empty_cells",
    "mat_with_segmentation",
    "png_header_only",
    "tgz_with_pax_header",
    "tgz_with_zero_member",
]

_ZERO_CHUNK = bytes(1 << 20)


def _tag(kind: int, nbytes: int) -> bytes:
    return struct.pack("<II", kind, nbytes)


def _padded(kind: int, data: bytes) -> bytes:
    return _tag(kind, len(data)) + data + bytes(-len(data) % 8)


def mat_with_segmentation(height: int, width: int) -> bytes:
    """A MATLAB 5 file holding `GTcls.Segmentation`, a uint8 height x width array of zeros, zlib-compressed as
    MATLAB and scipy write it (about 1 KB per megapixel)."""
    data_len = height * width
    seg_body = (
        _padded(6, struct.pack("<II", 9, 0))  # array flags: mxUINT8_CLASS
        + _padded(5, struct.pack("<ii", height, width))  # dimensions
        + _tag(1, 0)  # name: empty (a struct field)
        + _tag(2, data_len)  # miUINT8 data follows
    )
    seg_len = len(seg_body) + data_len + (-data_len % 8)
    struct_body = (
        _padded(6, struct.pack("<II", 2, 0))  # mxSTRUCT_CLASS
        + _padded(5, struct.pack("<ii", 1, 1))
        + _padded(1, b"GTcls")
        + struct.pack("<HHi", 5, 4, 32)  # small element: field name length 32
        + _padded(1, b"Segmentation".ljust(32, b"\0"))
        + _tag(14, seg_len)
    )
    head = _tag(14, len(struct_body) + seg_len) + struct_body + seg_body
    z = zlib.compressobj(1)
    out = [z.compress(head)]
    left = data_len + (-data_len % 8)
    while left:
        step = min(left, len(_ZERO_CHUNK))
        out.append(z.compress(_ZERO_CHUNK[:step]))
        left -= step
    out.append(z.flush())
    compressed = b"".join(out)
    header = b"MATLAB 5.0 MAT-file, written by a test".ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    return header + _tag(15, len(compressed)) + compressed


def _array(mx_class: int, dims: list[int], name: bytes, body: bytes) -> bytes:
    inner = (
        _padded(6, struct.pack("<II", mx_class, 0))
        + _padded(5, struct.pack(f"<{len(dims)}i", *dims))
        + _padded(1, name)
        + body
    )
    return _tag(14, len(inner)) + inner


def mat_with_empty_cells(outer: int, inner: int) -> bytes:
    """A MATLAB 5 file holding `GTcls` with a valid 4 x 4 `Segmentation` and `Boundaries`, a cell array of `outer`
    cell arrays of `inner` empty matrices each (8 bytes apiece, so `outer` x `inner` arrays compress to ~1 KB per
    100,000): every array costs a reader a step and an object, whatever its size."""
    seg = _array(9, [4, 4], b"", _padded(2, bytes(16)))  # mxUINT8, miUINT8
    cells = _array(1, [inner, 1], b"", _tag(14, 0) * inner)
    boundaries = _array(1, [outer, 1], b"", cells * outer)
    names = b"Segmentation".ljust(32, b"\0") + b"Boundaries".ljust(32, b"\0")
    gtcls = _array(2, [1, 1], b"GTcls", struct.pack("<HHi", 5, 4, 32) + _padded(1, names) + seg + boundaries)
    header = b"MATLAB 5.0 MAT-file, written by a test".ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    compressed = zlib.compress(gtcls, 9)
    return header + _tag(15, len(compressed)) + compressed


class _Zeros:
    """A file-like object of `size` zero bytes (tarfile.addfile reads members from it)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def tgz_with_zero_member(path: Path, members: dict[str, int | bytes]) -> Path:
    """A .tgz holding `members` (name -> bytes, or a size for that many zero bytes, streamed)."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, int):
                info.size = content
                tf.addfile(info, _Zeros(content))  # type: ignore[arg-type]
            else:
                info.size = len(content)
                tf.addfile(info, _Zeros(0) if not content else _BytesReader(content))  # type: ignore[arg-type]
    return path


class _BytesReader(_Zeros):
    def __init__(self, data: bytes) -> None:
        super().__init__(len(data))
        self.data = data

    def read(self, n: int = -1) -> bytes:
        start = len(self.data) - self.left
        chunk = super().read(n)
        return self.data[start : start + len(chunk)]


def tgz_with_pax_header(path: Path, header_size: int) -> Path:
    """A .tgz whose first record is a pax extended header declaring `header_size` bytes (zeros, streamed):
    tarfile reads a pax header's data in one call."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = header_size
    with tarfile.open(path, "w:gz", compresslevel=1, format=tarfile.USTAR_FORMAT) as tf:
        tf.fileobj.write(info.tobuf(tarfile.USTAR_FORMAT))  # type: ignore[union-attr]
        left = header_size + (-header_size % 512)
        while left:
            step = min(left, len(_ZERO_CHUNK))
            tf.fileobj.write(_ZERO_CHUNK[:step])  # type: ignore[union-attr]
            left -= step
        tf.offset += 512 + header_size + (-header_size % 512)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """The signature and IHDR of an 8-bit greyscale PNG of width x height, then IEND: the size is declared, no pixel
    is stored."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
