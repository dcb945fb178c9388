"""The models otseg knows by name: one small table of data, read by `Predictor.from_pretrained`, the CLI and the web
page. Each is an ordinary otseg model folder shipped with the package (`config.json` + `model.safetensors`, read by
`otseg.model_files.otseg_folder.load_pretrained` like any other), so naming one builds, trains or imports nothing.

>>> named_model("demo").path   # .../otseg/builtin_models/demo, a folder in otseg's format
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from otseg.errors import UnknownNameError

__all__ = ["BUILTIN_MODELS", "NAMED_MODELS", "NamedModel", "named_model"]

BUILTIN_MODELS = Path(__file__).with_name("builtin_models")
SAMPLES = BUILTIN_MODELS / "samples"  # <model name>.json: a picture to try the model on, and its class names


@dataclass(frozen=True)
class NamedModel:
    """A model available without a file of the user's: its shipped folder, and what it segments."""

    name: str
    summary: str
    path: Path  # a folder in otseg's format (save_pretrained), shipped with the package

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes the model comes with, from its `config.json` (read once, without building the model)."""
        return _class_names(self.path / "config.json")

    @property
    def sample(self) -> tuple[Path, tuple[str, ...]]:
        """A picture shipped with the model to try it on, and the class names it shows (`otseg segment --sample`)."""
        info = json.loads((SAMPLES / f"{self.name}.json").read_text(encoding="utf-8"))
        return SAMPLES / info["image"], tuple(info["classes"])


@cache
def _class_names(config_file: Path) -> tuple[str, ...]:
    return tuple(json.loads(config_file.read_text(encoding="utf-8"))["class_names"])


NAMED_MODELS: dict[str, NamedModel] = {
    # Written by `otseg.demo.pretrained.write_demo_model_folder` from the demo's shipped packs.
    "demo": NamedModel(
        name="demo",
        summary="OTSeg+ trained inductively on the built-in miniature world (shipped with otseg; it knows only "
        "its world's words)",
        path=BUILTIN_MODELS / "demo",
    ),
}


def named_model(name: str) -> NamedModel:
    """The named model `name`.

    Raises:
        KeyError: an unknown name; the message lists the known ones.
    """
    if name not in NAMED_MODELS:
        raise UnknownNameError(f"unknown model {name!r}; the built-in models are: {', '.join(NAMED_MODELS)}")
    return NAMED_MODELS[name]
