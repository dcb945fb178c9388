"""The OpenAI CLIP ViT architecture, with OpenAI's parameter names.

Every parameter keeps the name it has in OpenAI's released checkpoints (`visual.conv1.weight`,
`transformer.resblocks.3.attn.in_proj_weight`, `ln_final.bias`, ...), so their state dicts load without
renaming. Internally activations are batch-first, (B, L, C); OpenAI's code runs sequence-first, (L, B, C),
which only changes memory layout, not values.

One block / transformer implementation serves the image tower, the text tower and the prompted image tower
of OTSeg (`otseg.clip.vpt`).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from otseg.clip.config import TextConfig, VisionConfig
from otseg.errors import BadValueError

__all__ = [
    "CLIP",
    "LayerNorm",
    "QuickGELU",
    "ResidualAttentionBlock",
    "SelfAttention",
    "TextTransformer",
    "Transformer",
    "VisionTransformer",
    "resample_positional_grid",
    "resize_positional_embedding",
]


class LayerNorm(nn.LayerNorm):
    """LayerNorm that always normalises in float32 and returns the input's dtype.

    CLIP checkpoints are released in fp16; normalising in fp16 loses too much precision, so OpenAI (and the
    reference) upcast here. For float32 inputs this is a plain LayerNorm.
    """

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        out = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation CLIP was trained with (not nn.GELU)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a packed q/k/v projection.

    The parameters are named like `nn.MultiheadAttention`'s (`in_proj_weight` (3C, C), `in_proj_bias` (3C),
    `out_proj.{weight,bias}`), which is what CLIP checkpoints contain.
    """

    def __init__(self, width: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        if width % heads != 0:
            raise BadValueError(f"attention width {width} is not divisible by the number of heads {heads}")
        self.heads = heads
        self.causal = causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, C) -> (B, L, C)."""
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        # (B, L, 3C) -> 3 x (B, heads, L, C/heads)
        q, k, v = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with a 4x QuickGELU MLP."""

    def __init__(self, width: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.attn = SelfAttention(width, heads, causal)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, 4 * width)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(4 * width, width)),
                ]
            )
        )
        self.ln_2 = LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, C) -> (B, L, C)."""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of `ResidualAttentionBlock`s, held in `.resblocks` (the checkpoint's name)."""

    def __init__(self, width: int, layers: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, causal) for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, C) -> (B, L, C)."""
        for block in self.resblocks:
            x = block(x)
        return x


def resample_positional_grid(spatial: Tensor, src_grid: int, dst_grid: tuple[int, int]) -> Tensor:
    """Bilinearly resample a square grid of positional embeddings, the way the reference does.

    spatial: (src_grid * src_grid, W), row-major -> (h * w, W) for dst_grid = (h, w).

    The reference reshapes to (1, g, g, W) and permutes to (1, W, g, g) *without* making it contiguous
    (a channels-last tensor) before `F.interpolate(mode="bilinear", align_corners=False)`; we keep that
    sequence so that the same interpolation kernel runs (results match the reference bit for bit).
    """
    width = spatial.shape[-1]
    h, w = dst_grid
    grid = spatial.reshape(1, src_grid, src_grid, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
    return grid.reshape(width, h * w).transpose(0, 1)


def resize_positional_embedding(pos: Tensor, new_grid: int | tuple[int, int]) -> Tensor:
    """Resize a CLIP positional table to another patch grid, keeping the CLS row.

    pos: (1 + g*g, W) with g inferred from the row count -> (1 + h*w, W), where (h, w) = new_grid
    (an int means a square grid). Returned unchanged (same tensor) when the grid already matches, as the
    reference only resizes when the shapes differ.
    """
    if pos.dim() != 2:
        raise BadValueError(f"positional embedding must be 2-D (1 + g*g, W), got shape {tuple(pos.shape)}")
    src = math.isqrt(pos.shape[0] - 1)
    if src * src != pos.shape[0] - 1:
        raise BadValueError(
            f"positional embedding has {pos.shape[0]} rows; expected 1 + g*g (a CLS row and a square grid)"
        )
    h, w = (new_grid, new_grid) if isinstance(new_grid, int) else new_grid
    if (h, w) == (src, src):
        return pos
    return torch.cat([pos[:1], resample_positional_grid(pos[1:], src, (h, w))], dim=0)


class VisionTransformer(nn.Module):
    """OpenAI CLIP's ViT image tower: (B, 3, H, W) -> (B, output_dim) unnormalised CLS embedding.

    Only the architecture fields of `cfg` are used (the prompt fields belong to the prompted subclass).
    The positional table has 1 + grid_size**2 rows; this plain tower does not resample it, so inputs must be
    cfg.image_size square.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid_size**2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, cfg.heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, cfg.output_dim))

    def patchify(self, images: Tensor) -> tuple[Tensor, int, int]:
        """(B, 3, H, W) -> patch tokens (B, h*w, width) in row-major order, and the grid size h, w."""
        x = self.conv1(images.to(self.conv1.weight.dtype))
        _, _, h, w = x.shape
        return x.flatten(2).transpose(1, 2), h, w

    def forward(self, images: Tensor) -> Tensor:
        x, _, _ = self.patchify(images)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class _TextTower(nn.Module):
    """CLIP's causal text transformer, as a base class.

    OpenAI's `CLIP` keeps the text parameters at its top level (`token_embedding.weight`, `transformer.*`,
    `ln_final.*`, ...), so the text tower is a base class that both `TextTransformer` and `CLIP` build into
    themselves rather than a submodule.
    """

    def _build_text_tower(self, cfg: TextConfig) -> None:
        self.text_cfg = cfg
        self.context_length = cfg.context_length
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, causal=True)
        self.ln_final = LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.output_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.width**-0.5)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Token ids (n, L) int64, L <= context_length -> (n, output_dim) unnormalised embeddings.

        The sentence embedding is read at the end-of-text token, found as `tokens.argmax(-1)` (EOT has the
        largest id; the first maximum wins, as in OpenAI's code).
        """
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[-1]]
        x = self.ln_final(self.transformer(x))
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return eot @ self.text_projection


class TextTransformer(_TextTower):
    """The CLIP text tower on its own: tokens (n, L) -> (n, output_dim) unnormalised."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self._build_text_tower(cfg)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.encode_text(tokens)


class CLIP(_TextTower):
    """OpenAI CLIP (ViT image tower), state-dict compatible with OpenAI's `clip.model.CLIP`.

    `vision.heads` is used as given (OpenAI derives it as width // 64); the prompt fields of `vision` are
    ignored. Both towers must project to the same dimension.
    """

    def __init__(self, vision: VisionConfig, text: TextConfig) -> None:
        super().__init__()
        if vision.output_dim != text.output_dim:
            raise BadValueError(
                f"image and text embedding sizes differ: vision.output_dim={vision.output_dim}, "
                f"text.output_dim={text.output_dim}"
            )
        self.visual = VisionTransformer(vision)
        self._build_text_tower(text)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, output_dim) unnormalised."""
        return self.visual(images)

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Images (B, 3, H, W) and tokens (n, L) -> logits_per_image (B, n), logits_per_text (n, B)."""
        image_features = self.encode_image(images)
        text_features = self.encode_text(tokens)
        image_features = image_features / image_features.norm(dim=1, keepdim=True)
        text_features = text_features / text_features.norm(dim=1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()
