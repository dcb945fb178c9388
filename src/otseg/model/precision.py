"""Inference precision: "float32" (the default, the reference's) or "bf16" (bfloat16 autocast on the image tower).

With "bf16" the image tower (the ViT, about 95 % of a crop's time at full size) runs under
`torch.autocast(dtype=torch.bfloat16)`; its two outputs are cast back to float32 before the decode head, so the
head (relationship queries, Sinkhorn, decoder layers, the sigmoid and the seen-class bias) and the final scores are
computed in float32 exactly as with "float32". "float32" enters no autocast region at all: its results are the
same bits as code that never heard of precision.

bfloat16 pays only where the hardware computes in it: GPUs since Ampere, CPUs with AVX512-BF16 or AMX. Elsewhere
(e.g. an AVX2-only CPU) oneDNN emulates it and "bf16" is several times *slower* than float32; `precision_note`
says so.

The precision is an argument of each call (`OTSeg.predict_scores(..., precision=)`, `Predictor(precision=)`,
`evaluate(..., precision=)`), never a field written into a model's config. docs/speed.md gives the speed and the
agreement with float32.
"""

from __future__ import annotations

import contextlib
from typing import cast

import torch

from otseg.config import PRECISIONS, Precision
from otseg.errors import BadValueError

__all__ = ["PRECISIONS", "Precision", "check_precision", "image_tower_autocast", "precision_note"]


def check_precision(value: object, where: str = "precision") -> Precision:
    """`value` as a `Precision`, or a ValueError naming `where`, the value and the valid choices."""
    if not isinstance(value, str) or value not in PRECISIONS:
        raise BadValueError(f"{where} {value!r} is not one of {', '.join(PRECISIONS)} (float32 is the default)")
    return cast(Precision, value)


def image_tower_autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The context the image tower runs in: bfloat16 autocast for "bf16", nothing at all for "float32".

    Raises:
        ValueError: "bf16" on a device type torch has no autocast for.
    """
    if precision == "float32":
        return contextlib.nullcontext()
    if not torch.amp.is_autocast_available(device.type):
        raise BadValueError(
            f"precision 'bf16' needs autocast, which torch does not offer on {device.type}; use float32"
        )
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN, which runs torch's CPU matmuls, reports bfloat16 support on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def precision_note(precision: Precision, device: torch.device) -> str | None:
    """A one-line note when `precision` is likely to be slower than float32 on `device`, else None."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return (
            "precision bf16: this CPU has no bfloat16 units (oneDNN reports no bf16 support), so bf16 runs several "
            "times slower than float32 here; use float32 on this machine (docs/speed.md)"
        )
    return None
