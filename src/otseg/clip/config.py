"""Typed configuration of the CLIP towers: the ViT image tower (with deep visual prompts) and the text tower.

Every size has an upper bound (`_at_most`, listed in docs/safety.md) far above any released CLIP (ViT-L/14 has
width 1024, 24 layers), and each tower can count its parameters from its config alone, so that the memory a
config implies is known before anything is built (`otseg.config.ModelConfig` refuses too large a model).

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
    _at_most: ClassVar[dict[str, int]] = {
        "image_size": 4096, "patch_size": 256, "width": 8192, "layers": 128, "heads": 256, "output_dim": 8192,
        "num_prompt_tokens": 1024, "deep_prompt_layers": 128,
    }  # fmt: skip

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

    @property
    def num_tokens(self) -> int:
        """Tokens one image window puts through the tower: the patches, the class token and the prompts."""
        return self.grid_size**2 + 1 + self.num_prompt_tokens

    def parameter_count(self) -> int:
        """The parameters of the tower this config builds (`otseg.clip.vpt.VPTVisionTransformer`), counted from
        the config alone: patch embedding, class token, positional table, prompts and their projection, the
        residual blocks, the final projection."""
        w, t = self.width, self.num_prompt_tokens
        stem = 3 * self.patch_size**2 * w + w + (self.grid_size**2 + 1) * w + 4 * w  # conv1, class, table, ln_pre/post
        prompts = (1 + self.deep_prompt_layers) * t * w + w * w + 3 * w  # shallow + deep prompts, prompt_proj/norm
        return stem + prompts + self.layers * _block_parameters(w) + w * self.output_dim

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
    _at_most: ClassVar[dict[str, int]] = {
        "context_length": 1024, "vocab_size": 1_048_576, "width": 8192, "heads": 256, "layers": 128, "output_dim": 8192,
    }  # fmt: skip

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    output_dim: int = 512

    def parameter_count(self) -> int:
        """The parameters of the text tower this config builds (`otseg.clip.text.TextEncoder`): token and position
        tables, the residual blocks, the final norm and projection."""
        w = self.width
        tables = (self.vocab_size + self.context_length) * w
        return tables + self.layers * _block_parameters(w) + 2 * w + w * self.output_dim

    def _check(self) -> None:
        if self.width % self.heads:
            raise self._fail("heads", self.heads, f"a divisor of text.width ({self.width})")


def _block_parameters(width: int) -> int:
    """One CLIP residual block: attention (in_proj 3w x w, out_proj w x w, with biases), MLP (w -> 4w -> w), two
    layer norms."""
    return 12 * width * width + 13 * width
