"""otseg: OTSeg zero-shot semantic segmentation (Multi-Prompt Sinkhorn on CLIP) in modern PyTorch."""

from otseg.config import HeadConfig, ModelConfig, TextConfig, VisionConfig
from otseg.formats.class_embeddings import load_class_embeddings
from otseg.model.build import build_model
from otseg.model.presets import get_preset, list_presets
from otseg.model.segmentor import OTSeg
from otseg.model.text import compute_class_embeddings
from otseg.model_files.otseg_folder import load_pretrained, save_pretrained
from otseg.model_files.reference_pth import load_reference_checkpoint
from otseg.predictor import Prediction, Predictor
from otseg.version import __version__

__all__ = [
    "HeadConfig",
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
