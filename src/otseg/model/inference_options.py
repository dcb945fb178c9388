"""Test-time settings passed to an inference call as a value, never written into a model's config.

One trained model is scored several ways: OTSeg (the decoder path alone) and OTSeg+ (the ensemble with the MPS
path), with and without the seen-class bias, with a faster Sinkhorn mode. Each of those is an `InferenceOptions`
given to the call (`OTSeg.predict_scores` / `slide_inference` / `encode_decode`, `OTSegHead.predict`,
`otseg.eval.evaluate.evaluate`); the model and its validated config stay as they were built, so concurrent calls
with different options cannot disturb each other.

    >>> decoder_only = InferenceOptions(ensemble_weight=1.0)          # plain OTSeg from an OTSeg+ model
    >>> scores = model.predict_scores(images, options=decoder_only)
    >>> fast = InferenceOptions(sinkhorn=SinkhornOptions(fixed_iters=20))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from otseg.errors import BadValueError
from otseg.ops.sinkhorn_options import SinkhornOptions

__all__ = ["InferenceOptions"]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class InferenceOptions:
    """How one inference call scores; None means "the model config's".

    Attributes:
        ensemble_weight: weight of the decoder path in the OTSeg+ ensemble w * decoder + (1 - w) * MPS, in [0, 1]
            (1.0: the decoder alone, plain OTSeg); None: `config.head.ensemble_weight`. A head without the MPS
            path scores its decoder alone whatever the weight.
        seen_bias: subtracted from the seen classes' scores after the sigmoid; None: `config.head.seen_bias` where
            the config's setting applies one (`ModelConfig.apply_seen_bias`: not after transductive
            self-training). A number given here applies in every setting (0.0: no bias).
        sinkhorn: the Sinkhorn modes of every call of the head (`otseg.ops.SinkhornOptions`: fixed iterations, a
            looser threshold, the update rule, ...); the default is the reference's stopping rule with the head
            config's threshold and cap.
    """

    ensemble_weight: float | None = None
    seen_bias: float | None = None
    sinkhorn: SinkhornOptions = field(default_factory=SinkhornOptions)

    def __post_init__(self) -> None:
        w = self.ensemble_weight
        if w is not None and not (_is_number(w) and 0.0 <= w <= 1.0):
            raise BadValueError(f"inference ensemble_weight {w!r}: expected a weight in [0, 1] or None")
        if self.seen_bias is not None and not _is_number(self.seen_bias):
            raise BadValueError(f"inference seen_bias {self.seen_bias!r}: expected a finite number or None")
        if not isinstance(self.sinkhorn, SinkhornOptions):
            raise TypeError(
                f"inference sinkhorn must be an otseg.ops.SinkhornOptions (e.g. SinkhornOptions(fixed_iters=20)), "
                f"got {type(self.sinkhorn).__name__}"
            )
