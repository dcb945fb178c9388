"""Bounds on the tensors a file holds, checked after reading and before anything converts or copies them.

A pickled tensor is a view (offset, shape, strides) of a storage: the bytes the file really holds. Reading it
costs the storage; converting it (`.float()`, `.contiguous()`, hashing, copying into a model) costs the view.
A crafted file can declare a 100000 x 100000 view with stride 0 over 4 bytes of storage: torch reads it in
microseconds, and the first conversion asks for 40 GB. So every tensor read from a file is checked here:

- its element count against its storage: a view may not hold more elements than its storage (no element is read
  twice beyond what the file stores);
- all views together against all distinct storages: at most `MAX_VIEW_RATIO` times the stored bytes (tied
  weights share a storage; nothing else does).

With both, converting everything a file holds costs at most a small multiple of the file's own size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor

from otseg.errors import BadValueError

__all__ = ["MAX_VIEW_RATIO", "check_stored_tensors", "iter_tensors"]

MAX_VIEW_RATIO = 2  # the bytes of all views together, over the bytes of the distinct storages they view


def iter_tensors(obj: Any, root: str = "") -> Iterator[tuple[str, Tensor]]:
    """Every tensor inside nested dicts, lists and tuples, with its path ("optimizer.state.3.exp_avg"); walked
    with an explicit stack, so that a deeply nested file cannot exhaust Python's recursion limit."""
    stack: list[tuple[str, Any]] = [(root, obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, Tensor):
            yield path, value
        elif isinstance(value, Mapping):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))


def check_stored_tensors(obj: Any, source: str) -> None:
    """Refuse (one ValueError naming `source` and the entry) tensors whose views ask for more memory than the file
    stores; see the module docstring. `obj` is what a reader returned: a tensor or nested containers of them."""
    stored: dict[tuple[int, int], int] = {}
    viewed = 0
    for path, t in iter_tensors(obj):
        storage = t.untyped_storage()
        need = t.numel() * t.element_size()
        if need > storage.nbytes():
            raise BadValueError(
                f"{source}: entry {path or 'the tensor'} declares shape {tuple(t.shape)} ({need:,} bytes) over "
                f"{storage.nbytes():,} stored bytes (a view that repeats its data, as crafted files do); the file is "
                "not a checkpoint otseg writes or reads"
            )
        stored[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        viewed += need
    total = sum(stored.values())
    if viewed > MAX_VIEW_RATIO * total:
        raise BadValueError(
            f"{source}: its tensors view {viewed:,} bytes of {total:,} stored bytes (views that repeat shared data, "
            "as crafted files do); the file is not a checkpoint otseg writes or reads"
        )
