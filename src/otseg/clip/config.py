"""Typed configuration of the CLIP towers: the ViT image tower (with deep visual prompts) and the text tower.

Part of the configuration layer: imports nothing from otseg but the validation base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from otseg.validation import Validated

__all__ = ["TextConfig", "VisionConfig"]


@dataclass
class VisionConfig(Validated):
    """CLIP ViT image tower with deep visual prompt tuning (the reference's `VPTCLIPVisionTransformer`)."""

    _section: ClassVar[str] = "vision."
    _positive: ClassVar[tuple[str, ...]] = ("image_size", "patch_size", "width", "layers", "heads", "output_dim")
    _non_negative: ClassVar[tuple[str, ...]] = ("num_prompt_tokens", "deep_prompt_layers")
    _fractions: ClassVar[tuple[str, ...]] = ("prompt_dropout",)

    image_size: int = 512  # input_resolution: the positional table is resampled to image_size/patch_size
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    output_dim: int = 512
    num_prompt_tokens: int = 10  # 100 for COCO-Stuff
    deep_prompt_layers: int = 11  # total_d_layer: blocks 1..deep_prompt_layers get fresh prompts
    prompt_dropout: float = 0.1  # hard-coded in the reference, active in training

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def _check(self) -> None:
        if self.width % self.heads:
            raise self._fail("heads", self.heads, f"a divisor of vision.width ({self.width})")
        if self.image_size < self.patch_size:
            raise self._fail("image_size", self.image_size, f"at least vision.patch_size ({self.patch_size})")


@dataclass
class TextConfig(Validated):
    """CLIP text transformer (only needed to embed class names live)."""

    _section: ClassVar[str] = "text."
    _positive: ClassVar[tuple[str, ...]] = ("context_length", "vocab_size", "width", "heads", "layers", "output_dim")

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    output_dim: int = 512

    def _check(self) -> None:
        if self.width % self.heads:
            raise self._fail("heads", self.heads, f"a divisor of text.width ({self.width})")
