"""otseg: OTSeg zero-shot semantic segmentation (Multi-Prompt Sinkhorn on CLIP) in modern PyTorch.

The names below are imported on first use (PEP 562), so `import otseg` (or `import otseg.ops.sinkhorn`) loads only
what it names: `from otseg import Predictor` brings in inference, never training, the demo or dataset preparation.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from otseg.version import __version__

if TYPE_CHECKING:
    from otseg.config import HeadConfig, ModelConfig, TextConfig, VisionConfig
    from otseg.formats.class_embeddings import load_class_embeddings
    from otseg.model.build import build_model
    from otseg.model.inference_options import InferenceOptions
    from otseg.model.presets import get_preset, list_presets
    from otseg.model.segmentor import OTSeg
    from otseg.model.text import compute_class_embeddings
    from otseg.model_files.otseg_folder import load_pretrained, save_pretrained
    from otseg.model_files.reference_pth import load_reference_checkpoint
    from otseg.predictor import Prediction, Predictor

# Each public name and the module that defines it.
_EXPORTS = {
    "HeadConfig": "otseg.config",
    "ModelConfig": "otseg.config",
    "TextConfig": "otseg.config",
    "VisionConfig": "otseg.config",
    "load_class_embeddings": "otseg.formats.class_embeddings",
    "build_model": "otseg.model.build",
    "InferenceOptions": "otseg.model.inference_options",
    "get_preset": "otseg.model.presets",
    "list_presets": "otseg.model.presets",
    "OTSeg": "otseg.model.segmentor",
    "compute_class_embeddings": "otseg.model.text",
    "load_pretrained": "otseg.model_files.otseg_folder",
    "save_pretrained": "otseg.model_files.otseg_folder",
    "load_reference_checkpoint": "otseg.model_files.reference_pth",
    "Prediction": "otseg.predictor",
    "Predictor": "otseg.predictor",
}

__all__ = [
    "HeadConfig",
    "InferenceOptions",
    "ModelConfig",
    "OTSeg",
    "Prediction",
    "Predictor",
    "TextConfig",
    "VisionConfig",
    "__version__",
    "build_model",
    "compute_class_embeddings",
    "get_preset",
    "list_presets",
    "load_class_embeddings",
    "load_pretrained",
    "load_reference_checkpoint",
    "save_pretrained",
]


def __getattr__(name: str) -> Any:
    """Import the module behind a public name on first access, then keep the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'otseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
