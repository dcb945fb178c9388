"""The training data order: which images each process reads for each micro-batch, with which augmentation seed.

The global order is a fresh permutation of the dataset per epoch, drawn from (seed, epoch). Optimizer step s takes
the next `global_batch` positions of it. They are cut into world_size x grad_accum groups of `batch_size`
consecutive positions, and group g is micro-batch g // world_size of process g % world_size: a group is the same
images whoever computes it, so 1 process x 4 micro-batches, 4 processes x 1 and 2 x 2 see the same groups (and a
Sinkhorn stopping group inside a micro-batch is the same images too). Each sample's augmentation is seeded by its
global position, so it does not depend on workers, processes or where a run was resumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from otseg.errors import BadValueError

if TYPE_CHECKING:
    from otseg.data.datasets import SegmentationDataset

__all__ = [
    "MAX_REPLACEMENT_TRIES",
    "SAMPLE_ERRORS",
    "SeededDataset",
    "SizedDataset",
    "StepBatchSampler",
    "collate_samples",
]

# What reading a bad sample raises (otseg.data.datasets turns every decoder failure into one of these, naming
# the file): OSError (FileNotFoundError, unreadable / corrupt / truncated files) and ValueError (label values
# out of range, size mismatch, colour-coded masks).
SAMPLE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError)
# With bad_samples="skip", how many samples (the bad one and the next ones in dataset order) are tried before
# a micro-batch slot is given up on.
MAX_REPLACEMENT_TRIES = 8


class SizedDataset(Protocol):
    """What the trainer reads: a map-style dataset with a length (e.g. `otseg.data.SegmentationDataset`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's micro-batches for steps start..stop-1 as lists of (dataset index, sample seed).

    Step s covers positions [s*G, (s+1)*G) of the global order, G = batch * world * accum (the global batch);
    micro-batch j of rank r takes the `batch` consecutive positions starting at s*G + (j*world + r)*batch (the
    module docstring says why). Each sample's seed is a function of its global position alone.

    Args:
        n: dataset size.
        batch: images per micro-batch (per process).
        world, rank: process count and this process's rank.
        accum: micro-batches per optimizer step.
        start, stop: the steps to cover (a resumed run starts at its checkpoint's step).
        seed: the run's seed (order and augmentation).
    """

    def __init__(self, n: int, batch: int, world: int, rank: int, accum: int, start: int, stop: int, seed: int):
        if n == 0:
            raise BadValueError("the training set is empty")
        if not 0 <= rank < world:
            raise BadValueError(f"rank {rank} outside 0..{world - 1}")
        self.n, self.batch, self.world, self.rank, self.accum = n, batch, world, rank, accum
        self.start, self.stop, self.seed = start, stop, seed
        self._perm_epoch = -1
        self._perm: list[int] = []  # drawn on first use (epoch -1 never matches)

    def _position(self, pos: int) -> int:
        epoch, offset = divmod(pos, self.n)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
        return self._perm[offset]

    def positions(self, step: int, micro: int) -> range:
        """Global positions of this rank's micro-batch `micro` of step `step`."""
        global_batch = self.batch * self.world * self.accum
        base = step * global_batch + (micro * self.world + self.rank) * self.batch
        return range(base, base + self.batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            for micro in range(self.accum):
                yield [(self._position(p), (self.seed * 1_000_003 + p) % 2**63) for p in self.positions(step, micro)]

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accum


class SeededDataset(Dataset):
    """Calls `dataset.get(index, rng)` with a generator seeded per sample (falls back to `dataset[index]`).

    A sample that raises one of `SAMPLE_ERRORS` does not raise here (in a DataLoader worker the exception would
    reach the main process as a multi-line traceback): the item records it under "bad" as (sample, message)
    pairs. With `skip_bad` the next samples in dataset order are tried (same augmentation seed) until one
    loads; without, or when none of `MAX_REPLACEMENT_TRIES` loads, the item is marked "failed".
    """

    def __init__(self, dataset: SizedDataset, skip_bad: bool = False) -> None:
        self.dataset = dataset
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def _sample_name(self, index: int) -> str:
        samples = getattr(self.dataset, "samples", None)
        try:
            return str(samples[index][0]) if samples is not None else f"sample {index}"
        except (IndexError, KeyError, TypeError):
            return f"sample {index}"

    def _load(self, index: int, seed: int) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        if hasattr(self.dataset, "get"):
            return self.dataset.get(index, rng)
        transform = getattr(self.dataset, "transform", None)
        if hasattr(self.dataset, "load") and transform is not None:  # otseg.data.SegmentationDataset
            dataset = cast("SegmentationDataset", self.dataset)
            image, label = dataset.load(index)  # reads and checks the files: the only step that may fail
            try:
                image_t, label_t = transform(image, label, rng=rng)
            except SAMPLE_ERRORS as e:
                # An error of the transform itself is a bug, not bad data: never skip it as a bad file.
                raise RuntimeError(f"transform failed on {self._sample_name(index)}: {e}") from e
            return {"image": image_t, "label": label_t, "path": str(dataset.samples[index][0])}
        return self.dataset[index]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        n = len(self.dataset)
        bad: list[tuple[str, str]] = []
        for k in range(min(n, MAX_REPLACEMENT_TRIES) if self.skip_bad else 1):
            j = (index + k) % n  # deterministic replacement: resuming and worker layouts see the same one
            try:
                item = dict(self._load(j, seed))
            except SAMPLE_ERRORS as e:
                bad.append((self._sample_name(j), " ".join(str(e).split()) or type(e).__name__))
                continue
            item["bad"] = bad
            return item
        return {"bad": bad, "failed": True}


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a micro-batch; "bad" lists the (sample, message) pairs met, "failed" a slot left without a sample."""
    bad = [b for s in samples for b in s.get("bad", ())]
    requested = len(samples)
    if any(s.get("failed") for s in samples):
        return {"bad": bad, "failed": True, "requested": requested}
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "label": torch.stack([s["label"] for s in samples]),
        "path": [s.get("path", "") for s in samples],
        "bad": bad,
        "requested": requested,
    }
