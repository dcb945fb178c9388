"""`build_model`: a preset name (or config) + optional CLIP weights / class embeddings -> an OTSeg model."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from otseg.clip.loading import _load_checked, infer_clip_configs, load_clip_weights, text_state_dict
from otseg.clip.text import TextEncoder
from otseg.config import ModelConfig, apply_overrides
from otseg.errors import BadValueError
from otseg.formats.class_embeddings import load_class_embeddings
from otseg.formats.openai_clip import read_clip_state_dict
from otseg.formats.state_dict import check_state_dict_fits
from otseg.model.presets import get_preset
from otseg.model.segmentor import OTSeg

if TYPE_CHECKING:
    from otseg.clip.text import TextEncoder

__all__ = ["build_model"]


def build_model(
    preset: str | ModelConfig,
    *,
    clip: str | os.PathLike | None = None,
    class_embeddings: str | os.PathLike | Tensor | np.ndarray | None = None,
    **overrides: Any,
) -> OTSeg:
    """Build an OTSeg segmentor.

    Args:
        preset: a preset name (`otseg.list_presets()`, e.g. "voc12-inductive") or a `ModelConfig`.
        clip: optional OpenAI CLIP checkpoint (TorchScript archive such as `ViT-B-16.pt`, or a state dict):
            loads the frozen image tower (positional table resized to the preset's grid) and attaches the
            text tower so `model.set_classes(names)` works. Prompt parameters keep their init.
        class_embeddings: optional (K, N, D) embeddings or a file (`.npy` from the reference release, `.pt`,
            `.safetensors`) for the preset's classes.
        **overrides: config overrides; nested fields with a double underscore or a dot, e.g.
            `head__use_mps=False`, `**{"head.attention": "softmax"}`, `stride=256`.

    Returns:
        The model in training mode (call `.eval()` before inference), on the CPU.
    """
    cfg = get_preset(preset) if isinstance(preset, str) else preset
    if overrides:
        cfg = apply_overrides(cfg, {k.replace("__", "."): v for k, v in overrides.items()})
    model = OTSeg(cfg)
    if clip is not None:
        load_clip_into(model, clip)
    if class_embeddings is not None:
        if isinstance(class_embeddings, (str, os.PathLike)):
            class_embeddings = load_class_embeddings(class_embeddings)
        model.set_class_embeddings(class_embeddings)
    return model


def load_clip_into(
    model: OTSeg,
    clip: str | os.PathLike | dict,
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> None:
    """Load OpenAI CLIP weights into the image tower and attach a text tower built from the same file.

    Head counts are not stored in a checkpoint; they default to width // 64 (OpenAI's rule, right for the
    released models). Pass `text_heads` / `vision_heads` for models that break it (e.g. small test CLIPs).
    The image tower itself is `model.backbone`, built from `model.config.vision`, so `vision_heads` only
    matters to the shape inference and is accepted for symmetry with `infer_clip_configs`.
    """
    sd, source = _read_clip(clip)
    text_encoder = _text_tower(model, sd, source, vision_heads=vision_heads, text_heads=text_heads)
    try:
        load_clip_weights(model.backbone, None, sd)  # the image tower; the text keys are the tower's above
    except ValueError as e:
        # The state dict was read above, so these errors only know "<in-memory state dict>": name the file.
        if isinstance(clip, dict):
            raise
        raise BadValueError(f"cannot load CLIP weights from {clip}: {e}") from e
    _attach(model, text_encoder)


def attach_clip_text_tower(model: OTSeg, clip: str | os.PathLike | dict, *, text_heads: int | None = None) -> None:
    """Attach CLIP's text tower (only) from an OpenAI checkpoint, leaving the image backbone as it is.

    For models whose file holds the trained backbone but no text tower (training checkpoints, reference releases):
    the backbone keeps its loaded weights, and `set_classes` can embed any name. The tower's output width must be
    the head's width.
    """
    sd, source = _read_clip(clip)
    _attach(model, _text_tower(model, sd, source, text_heads=text_heads))


def _read_clip(clip: str | os.PathLike | dict) -> tuple[dict, str]:

    if isinstance(clip, dict):
        return clip, "<in-memory state dict>"
    return read_clip_state_dict(clip), str(clip)


def _text_tower(
    model: OTSeg, sd: dict, source: str, *, vision_heads: int | None = None, text_heads: int | None = None
) -> TextEncoder:
    """CLIP's text tower built from `sd`'s shapes and loaded (strictly); its width checked against the head's."""
    try:
        _, text_cfg = infer_clip_configs(sd, vision_heads=vision_heads, text_heads=text_heads)
    except ValueError as e:
        raise BadValueError(f"cannot load CLIP weights from {source}: {e}") from e
    if text_cfg.output_dim != model.config.head.embed_dim:
        raise BadValueError(
            f"the CLIP text tower in {source} embeds to {text_cfg.output_dim} dimensions but the model's head expects "
            f"{model.config.head.embed_dim}: this CLIP is not the one the model was built for"
        )
    with torch.device("meta"):  # shapes only: the file must fit before the tower is built (layers = key names)
        shapes_only = TextEncoder(text_cfg)
    check_state_dict_fits(shapes_only, text_state_dict(sd), f"CLIP weights {source} (the text encoder)")
    text_encoder = TextEncoder(text_cfg)
    _load_checked(text_encoder, text_state_dict(sd), source=source, what="the text encoder")
    return text_encoder


def _attach(model: OTSeg, text_encoder: TextEncoder) -> None:
    # The text tower's config goes into a new model config (saved with the model, so that the tower can be rebuilt
    # from our format); the validated config the model was built with is not edited.
    model.config = dataclasses.replace(model.config, text=text_encoder.text_cfg)
    model.attach_text_encoder(text_encoder)
