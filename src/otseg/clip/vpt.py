"""OTSeg's image encoder: the CLIP ViT with deep visual prompt tuning (reference `VPTCLIPVisionTransformer`).

The forward reproduces the reference exactly, including its quirks (see the golden README, quirks 1-5):

* the CLS token receives `class_embedding` twice (token + positional row 0 + class_embedding);
* the positional table (1 + g*g rows for g = cfg.grid_size) is bilinearly resampled at every forward to the
  actual patch grid, which need not be square;
* prompt tokens are inserted after `ln_pre`, between CLS and the patches, without positional embedding;
* before blocks 1..deep_prompt_layers the prompt outputs of the previous block are replaced by fresh deep
  prompts; later blocks get no prompt tokens at all;
* `prompt_norm` (eps 1e-6), `ln_post` and `proj` run on all tokens; both outputs are L2-normalised.
"""

from __future__ import annotations

import math
from typing import Literal, overload

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from otseg.clip.config import VisionConfig
from otseg.clip.model import LayerNorm, VisionTransformer, resample_positional_grid
from otseg.errors import BadValueError

__all__ = ["BlockActivations", "VPTVisionTransformer"]

# {"block_inputs": [...], "block_outputs": [...]}, each entry (L, B, width): the reference's layout.
BlockActivations = dict[str, list[Tensor]]


class VPTVisionTransformer(VisionTransformer):
    """CLIP ViT + deep VPT: images (B, 3, H, W) -> patch embeddings (B, D, H/p, W/p), global (B, D).

    Parameters are the CLIP visual ones (without the `visual.` prefix) plus `prompt_embeddings` (1, T, W),
    `deep_prompt_embeddings` (deep_prompt_layers, T, W), `prompt_proj.*` (shared by all layers) and
    `prompt_norm.*`. Only the names containing "prompt" are meant to be trained.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__(cfg)
        if not 1 <= cfg.deep_prompt_layers <= cfg.layers - 1:
            # The reference's shallow (0) and "reverse" (< 0) variants are unused by every released config.
            raise BadValueError(
                f"deep_prompt_layers must be in 1..layers-1 = 1..{cfg.layers - 1}, got {cfg.deep_prompt_layers}"
            )
        if cfg.num_prompt_tokens < 1:
            raise BadValueError(f"num_prompt_tokens must be >= 1, got {cfg.num_prompt_tokens}")
        width, tokens = cfg.width, cfg.num_prompt_tokens
        self.num_tokens = tokens
        self.prompt_embeddings = nn.Parameter(torch.zeros(1, tokens, width))
        self.deep_prompt_embeddings = nn.Parameter(torch.zeros(cfg.deep_prompt_layers, tokens, width))
        self.prompt_proj = nn.Linear(width, width)
        self.prompt_norm = LayerNorm(width, eps=1e-6)
        self.prompt_dropout = nn.Dropout(cfg.prompt_dropout)
        # Activation checkpointing of the transformer blocks (a training setting, `TrainConfig.checkpoint_backbone`):
        # when gradients are recorded, each block keeps only its input and recomputes the rest in backward.
        self.checkpoint_blocks = False
        self.reset_prompt_parameters()

    def reset_prompt_parameters(self) -> None:
        """The reference's constructor init of the prompt parameters (spec section 4.2)."""
        # VPT's "xavier uniform" bound for a patch_size x patch_size x 3 patch mapped to `width`.
        bound = math.sqrt(6.0 / (3 * self.cfg.patch_size**2 + self.cfg.width))
        nn.init.uniform_(self.prompt_embeddings, -bound, bound)
        nn.init.uniform_(self.deep_prompt_embeddings, -bound, bound)
        self.prompt_proj.reset_parameters()  # the bias keeps nn.Linear's default init
        nn.init.kaiming_normal_(self.prompt_proj.weight, a=0, mode="fan_out")
        self.prompt_norm.reset_parameters()

    def _project_prompts(self, prompts: Tensor, batch: int) -> Tensor:
        """(T, W) -> (B, T, W). Dropout comes after the expand, so each image gets its own mask."""
        return self.prompt_dropout(self.prompt_proj(prompts).expand(batch, -1, -1))

    def _embed(self, images: Tensor) -> tuple[Tensor, int, int]:
        """Patchify, add CLS and positions, ln_pre, insert the shallow prompts -> (B, 1 + T + h*w, W)."""
        x, h, w = self.patchify(images)
        batch = x.shape[0]
        cls_emb = self.class_embedding.to(x.dtype)
        pos = self.positional_embedding.to(x.dtype)
        # Quirk: positional row 0 is summed with class_embedding, and the CLS token *is* class_embedding.
        cls_pos = pos[:1] + cls_emb
        spatial_pos = resample_positional_grid(pos[1:], self.cfg.grid_size, (h, w))
        x = torch.cat([cls_emb.expand(batch, 1, -1), x], dim=1)
        x = x + torch.cat([cls_pos, spatial_pos], dim=0)
        x = self.ln_pre(x)
        prompts = self._project_prompts(self.prompt_embeddings[0], batch)
        return torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1), h, w

    def _blocks(self, x: Tensor, num_patches: int, record: BlockActivations | None) -> Tensor:
        """Run the transformer with deep prompts. (B, 1 + T + N, W) -> (B, L', W)."""
        batch, deep = x.shape[0], self.deep_prompt_embeddings.shape[0]
        for i, block in enumerate(self.transformer.resblocks):
            if 1 <= i <= deep:
                # Discard the previous block's prompt outputs, substitute this layer's fresh prompts.
                prompts = self._project_prompts(self.deep_prompt_embeddings[i - 1], batch)
                x = torch.cat([x[:, :1], prompts, x[:, 1 + self.num_tokens :]], dim=1)
            elif i > deep:
                x = torch.cat([x[:, :1], x[:, -num_patches:]], dim=1)
            if record is not None:
                record["block_inputs"].append(x.transpose(0, 1))
            if self.checkpoint_blocks and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if record is not None:
                record["block_outputs"].append(x.transpose(0, 1))
        return x

    # The override returns dense and global embeddings where CLIP's pooled tower returns one tensor: the class
    # derives from it to share its weights, key names and loading, not to stand in for it.
    @overload  # type: ignore[override]
    def forward(self, images: Tensor, return_blocks: Literal[False] = ...) -> tuple[Tensor, Tensor]: ...

    @overload
    def forward(self, images: Tensor, return_blocks: Literal[True]) -> tuple[Tensor, Tensor, BlockActivations]: ...

    def forward(
        self, images: Tensor, return_blocks: bool = False
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, BlockActivations]:
        """images (B, 3, H, W), H and W multiples of the patch size.

        Returns `(patch_embeddings (B, D, H/p, W/p), global_embedding (B, D))`, both L2-normalised over D.
        With `return_blocks=True` a third element holds every block's input and output in the reference's
        sequence-first layout (L, B, W), token order [CLS, prompts, patches row-major].
        """
        x, h, w = self._embed(images)
        record: BlockActivations | None = {"block_inputs": [], "block_outputs": []} if return_blocks else None
        x = self._blocks(x, h * w, record)
        x = self.ln_post(self.prompt_norm(x)) @ self.proj
        global_embedding = x[:, 0]
        global_embedding = global_embedding / global_embedding.norm(dim=1, keepdim=True)
        patches = x[:, -h * w :].reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        patches = patches / patches.norm(dim=1, keepdim=True)
        if record is not None:
            return patches, global_embedding, record
        return patches, global_embedding
