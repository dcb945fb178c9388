"""Sinkhorn settings a caller passes explicitly down a forward pass (the trainer: model -> head -> MPS / MPSA).

Two training settings of the reference recipe that are not properties of the model:

* `backward`: how the transport plan is differentiated: "implicit" (implicit function theorem on the converged
  plan, memory flat in the iteration count) or "unrolled" (autograd through every iteration, as the reference).
* `stop_group`: how many images share one stopping test. The reference's Sinkhorn stops all problems of a call
  together (one statistic, the mean change over every problem of the call), and a call covers the images of one
  GPU's batch (4 in the paper's recipe). A micro-batch of more images is split into groups of `stop_group`
  consecutive images, each solved by its own call, so that 16 images on one device stop as the reference's 4 GPUs
  x 4 images did. None: every image of the call in one test (the behaviour of a plain `sinkhorn` call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from otseg.errors import BadValueError

__all__ = ["SinkhornBackward", "SinkhornOptions"]

SinkhornBackward = Literal["implicit", "unrolled"]


@dataclass(frozen=True)
class SinkhornOptions:
    """Per-call Sinkhorn settings (see the module docstring).

    Attributes:
        backward: "implicit" or "unrolled".
        stop_group: images per stopping test, or None for all images of a call.
    """

    backward: SinkhornBackward = "implicit"
    stop_group: int | None = None

    def __post_init__(self) -> None:
        if self.backward not in ("implicit", "unrolled"):
            raise BadValueError(f"sinkhorn backward {self.backward!r}: expected 'implicit' or 'unrolled'")
        group = self.stop_group
        if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 1):
            raise BadValueError(f"sinkhorn stop_group {group!r}: expected a positive number of images or None")
