"""The CLIP text tower as OTSeg builds it (reference `CLIPTextEncoder`).

Its state-dict keys are the OpenAI ones without any prefix: `positional_embedding`, `text_projection`,
`token_embedding.weight`, `ln_final.*`, `transformer.resblocks.*`. The released OTSeg configs never run it
(text embeddings come from `.npy` files); it is used to embed class names live.
"""

from __future__ import annotations

from torch import Tensor

from otseg.clip.model import TextTransformer

__all__ = ["TextEncoder"]


class TextEncoder(TextTransformer):
    """`TextEncoder(cfg: TextConfig)`: tokens (n, L) int64 -> (n, output_dim) unnormalised embeddings."""

    def encode_prompts(self, tokens: Tensor) -> Tensor:
        """Class x template tokens (C, T, L) -> (C, T, D) embeddings as OTSeg uses them.

        Each prompt embedding is L2-normalised, then each class's (T, D) block is normalised again along D
        (a no-op up to rounding, but it is what produced the reference `.npy` files).
        """
        c, t, length = tokens.shape
        emb = self.encode_text(tokens.reshape(c * t, length))
        emb = emb / emb.norm(dim=-1, keepdim=True)
        emb = emb.reshape(c, t, -1)
        return emb / emb.norm(dim=-1, keepdim=True)
