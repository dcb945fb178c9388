"""`--set KEY=VALUE` options: parsed once, for every command that takes them."""

from __future__ import annotations

from collections.abc import Sequence

from otseg.errors import BadValueError

__all__ = ["parse_overrides", "split_overrides"]


def parse_overrides(items: Sequence[str] | None) -> dict[str, str]:
    """["head.use_mps=false", ...] -> {"head.use_mps": "false", ...} (values stay text; the configs convert them)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise BadValueError(f"--set expects key=value (e.g. head.use_mps=false), got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def split_overrides(items: Sequence[str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """--set entries: "train.KEY=VALUE" go to the training config (without the prefix), "data.KEY=VALUE" to the data
    pipeline (`data_config`), the rest to the model's."""
    model_over, train_over = {}, {}
    for key, value in parse_overrides(items).items():
        if key.startswith("train."):
            train_over[key[len("train.") :]] = value
        elif not key.startswith("data."):
            model_over[key] = value
    return model_over, train_over
