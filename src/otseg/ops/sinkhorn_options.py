"""Sinkhorn settings a caller passes explicitly down a forward pass (model -> head -> MPS / MPSA -> `sinkhorn`).

Nothing here changes a model's config: the options are a value given to the call that should use them (the
trainer passes its training settings to `OTSeg.forward`; inference passes modes inside `otseg.model.InferenceOptions`
to `OTSeg.predict_scores` / `encode_decode`; the ONNX export passes the fixed-iteration mode it bakes into its graph).

Two training settings of the reference recipe that are not properties of the model:

* `backward`: how the transport plan is differentiated: "implicit" (implicit function theorem on the converged
  plan, memory flat in the iteration count) or "unrolled" (autograd through every iteration, as the reference).
* `stop_group`: how many images share one stopping test. The reference's Sinkhorn stops all problems of a call
  together (one statistic, the mean change over every problem of the call), and a call covers the images of one
  GPU's batch (4 in the paper's recipe). A micro-batch of more images is split into groups of `stop_group`
  consecutive images, each solved by its own call, so that 16 images on one device stop as the reference's 4 GPUs
  x 4 images did. None: every image of the call in one test (the behaviour of a plain `sinkhorn` call).

And the loop's modes (the keyword arguments of `otseg.ops.sinkhorn.sinkhorn`; see its docstring), which replace
what the caller (the head, from its config) would pass:

* `fixed_iters`: exactly this many iterations per call and no stopping check (no host sync in the loop; what the
  ONNX export runs). Changes results.
* `update`: "scaling", "log" or "reference"; None: `sinkhorn`'s default for the backward.
* `thresh`, `max_iter`: the stopping rule's threshold and cap; None: the caller's (the head config's
  `sinkhorn_thresh` / `sinkhorn_max_iter`). A looser threshold changes results.
* `check_every`: iterations between host checks ("auto", "adaptive" or a positive int); results do not depend on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from otseg.errors import BadValueError

__all__ = ["SinkhornBackward", "SinkhornOptions", "SinkhornUpdate"]

SinkhornBackward = Literal["implicit", "unrolled"]
SinkhornUpdate = Literal["scaling", "log", "reference"]
SinkhornCheckEvery = int | Literal["auto", "adaptive"]


def _positive_int_or_none(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


@dataclass(frozen=True)
class SinkhornOptions:
    """Per-call Sinkhorn settings (see the module docstring); the defaults are `sinkhorn`'s own behaviour.

    Attributes:
        backward: "implicit" or "unrolled".
        stop_group: images per stopping test, or None for all images of a call.
        fixed_iters: iterations per call with no stopping check, or None for the stopping rule.
        update: the update rule, or None for `sinkhorn`'s default.
        thresh: the stopping threshold, or None for the caller's.
        max_iter: the iteration cap, or None for the caller's.
        check_every: iterations between host checks of the stopping rule.
    """

    backward: SinkhornBackward = "implicit"
    stop_group: int | None = None
    fixed_iters: int | None = None
    update: SinkhornUpdate | None = None
    thresh: float | None = None
    max_iter: int | None = None
    check_every: SinkhornCheckEvery = "auto"

    def __post_init__(self) -> None:
        if self.backward not in ("implicit", "unrolled"):
            raise BadValueError(f"sinkhorn backward {self.backward!r}: expected 'implicit' or 'unrolled'")
        if not _positive_int_or_none(self.stop_group):
            raise BadValueError(
                f"sinkhorn stop_group {self.stop_group!r}: expected a positive number of images or None"
            )
        if not _positive_int_or_none(self.fixed_iters):
            raise BadValueError(
                f"sinkhorn fixed_iters {self.fixed_iters!r}: expected a positive number of iterations or None"
            )
        if self.update not in (None, "scaling", "log", "reference"):
            raise BadValueError(f"sinkhorn update {self.update!r}: expected 'scaling', 'log', 'reference' or None")
        thresh = self.thresh
        if thresh is not None and (
            isinstance(thresh, bool) or not isinstance(thresh, int | float) or not math.isfinite(thresh) or thresh < 0
        ):
            raise BadValueError(f"sinkhorn thresh {thresh!r}: expected a finite number >= 0 or None")
        if not _positive_int_or_none(self.max_iter):
            raise BadValueError(
                f"sinkhorn max_iter {self.max_iter!r}: expected a positive number of iterations or None"
            )
        check = self.check_every
        if check not in ("auto", "adaptive") and (isinstance(check, bool) or not isinstance(check, int) or check < 1):
            raise BadValueError(f"sinkhorn check_every {check!r}: expected a positive int, 'auto' or 'adaptive'")

    def sinkhorn_kwargs(self, max_iter: int, thresh: float) -> dict[str, Any]:
        """The keyword arguments of one `sinkhorn` call: these options, with the caller's `max_iter` and `thresh`
        where the options leave them unset."""
        return {
            "max_iter": max_iter if self.max_iter is None else self.max_iter,
            "thresh": thresh if self.thresh is None else float(self.thresh),
            "update": self.update,
            "backward": self.backward,
            "check_every": self.check_every,
            "fixed_iters": self.fixed_iters,
        }
