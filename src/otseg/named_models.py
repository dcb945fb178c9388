"""The models otseg knows by name: one small table, read by `Predictor.from_pretrained`, the CLI and the web page.

>>> named_model("demo").folder(progress=False)   # the model's folder (otseg's format), unpacked in the cache
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from otseg.demo.pretrained import demo_model_dir
from otseg.demo.world import CLASS_NAMES as DEMO_CLASS_NAMES

__all__ = ["NAMED_MODELS", "NamedModel", "named_model"]


@dataclass(frozen=True)
class NamedModel:
    """A model available without a file: where its folder comes from, and what it segments."""

    name: str
    summary: str
    class_names: tuple[str, ...]
    folder: Callable[..., Path]  # folder(progress=bool) -> a folder in otseg's format, built or unpacked once


def _demo_folder(progress: bool = True) -> Path:
    return demo_model_dir(progress=progress)


NAMED_MODELS: dict[str, NamedModel] = {
    "demo": NamedModel(
        name="demo",
        summary="OTSeg+ trained inductively on the built-in miniature world (shipped with otseg; it knows only "
        "its world's words)",
        class_names=tuple(DEMO_CLASS_NAMES),
        folder=_demo_folder,
    ),
}


def named_model(name: str) -> NamedModel:
    """The named model `name`.

    Raises:
        KeyError: an unknown name; the message lists the known ones.
    """
    if name not in NAMED_MODELS:
        raise KeyError(f"unknown model {name!r}; the built-in models are: {', '.join(NAMED_MODELS)}")
    return NAMED_MODELS[name]
