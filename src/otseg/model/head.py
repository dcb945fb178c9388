"""The OTSeg decode head: relationship descriptor, MPS score path, and the MPSA decoder.

Reference: `ATMSingleHeadSeg` with `TPN_Decoder` / `TPN_DecoderLayer` / `AttentionOT`. The reference decoder
layers subclass `nn.TransformerDecoderLayer` and carry self-attention and `norm1` weights that their forward
never calls; this head has no such parameters (the checkpoint converter drops them by name).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from otseg.config import HeadConfig
from otseg.errors import BadValueError
from otseg.model.inference_options import InferenceOptions
from otseg.ops.mps import mps_scores
from otseg.ops.mpsa import MultiPromptSinkhornAttention, SoftmaxCrossAttention
from otseg.ops.sinkhorn_options import SinkhornOptions

__all__ = ["DecoderLayer", "HeadOutput", "OTSegHead"]


@dataclass
class HeadOutput:
    """Training-time outputs of the head, all logits at (output_size, output_size).

    Attributes:
        decoder_logits: (B, K, S, S) decoder (MPSA) path.
        mps_logits: (B, K, S, S) MPS path, or None when the MPS path is switched off.
        queries: (B, K, N, C) relationship-descriptor queries (input of the decoder).
        layer_queries: per decoder layer, the updated queries (B, K, N, C).
        layer_maps: per decoder layer, its score map (B, K, M).
        upsample_to: None when the logits are at the output size; S when they are at the patch grid
            (`forward(..., upsample=False)`) and the training outputs are their bilinear upsampling to (S, S).
    """

    decoder_logits: Tensor
    mps_logits: Tensor | None
    queries: Tensor
    layer_queries: list[Tensor] = field(default_factory=list)
    layer_maps: list[Tensor] = field(default_factory=list)
    upsample_to: int | None = None


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: cross-attention (MPSA or softmax) + ReLU FFN; no self-attention.

    queries (B, K, N, C), memory (B, M, C) -> (queries (B, K, N, C), score_map (B, K, M)).
    """

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        c = cfg.embed_dim
        if cfg.attention == "mpsa":
            self.attn: nn.Module = MultiPromptSinkhornAttention(
                c, cfg.sinkhorn_eps, cfg.attn_dropout, cfg.sinkhorn_max_iter, cfg.sinkhorn_thresh
            )
        elif cfg.attention == "softmax":
            self.attn = SoftmaxCrossAttention(c, cfg.num_heads, cfg.attn_dropout)
        else:
            raise BadValueError(f"unknown attention {cfg.attention!r}; use 'mpsa' or 'softmax'")
        self.norm_attn = nn.LayerNorm(c)
        self.linear1 = nn.Linear(c, cfg.ffn_dim)
        self.linear2 = nn.Linear(cfg.ffn_dim, c)
        self.norm_ffn = nn.LayerNorm(c)
        self.dropout_attn = nn.Dropout(cfg.dropout)
        self.dropout_ffn_hidden = nn.Dropout(cfg.dropout)
        self.dropout_ffn = nn.Dropout(cfg.dropout)

    def forward(
        self, queries: Tensor, memory: Tensor, sinkhorn_options: SinkhornOptions | None = None
    ) -> tuple[Tensor, Tensor]:
        attended, score_map = self.attn(queries, memory, sinkhorn_options)
        x = self.norm_attn(queries + self.dropout_attn(attended))
        ffn = self.linear2(self.dropout_ffn_hidden(F.relu(self.linear1(x))))
        x = self.norm_ffn(x + self.dropout_ffn(ffn))
        return x, score_map


class OTSegHead(nn.Module):
    """Decode head producing per-class logits from CLIP patch/global embeddings and class text embeddings.

    Parameters keep PyTorch's defaults, as in the reference (whose `init_weights` never runs): Linear
    kaiming-uniform(a=sqrt(5)) weights and U(+-1/sqrt(fan_in)) biases, LayerNorm 1 / 0. The decoder layers start
    as copies of one layer unless `cfg.layer_init` is "independent".

    Args:
        cfg: head configuration (width, layers, attention kind, MPS on/off, Sinkhorn settings, ...).
    """

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.embed_dim
        # Relationship descriptor: queries = Linear([global (x) text, text]).
        self.q_proj = nn.Linear(2 * c, c)
        if cfg.layer_init == "copies":
            # The reference's nn.TransformerDecoder deep-copies one layer num_layers times and its init_weights is
            # never called, so its layers start identical (spec section 4.2).
            first = DecoderLayer(cfg)
            self.layers = nn.ModuleList([first, *(copy.deepcopy(first) for _ in range(cfg.num_layers - 1))])
        elif cfg.layer_init == "independent":
            self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        else:
            raise BadValueError(f"unknown head.layer_init {cfg.layer_init!r}; use 'copies' or 'independent'")

    def relationship_queries(self, global_emb: Tensor, text: Tensor) -> Tensor:
        """global_emb (B, C), text (K, N, C) -> queries (B, K, N, C) = q_proj([global (x) text, text])."""
        t = text.unsqueeze(0).expand(global_emb.shape[0], -1, -1, -1)
        return self.q_proj(torch.cat([global_emb[:, None, None, :] * t, t], dim=-1))

    def combine_layer_maps(self, maps: list[Tensor]) -> Tensor:
        """Per-layer maps (B, K, M) -> decoder logits (B, K, M)."""
        if self.cfg.map_combination == "last" or len(maps) == 1:
            return maps[-1]
        exponent = 1.0 / (len(maps) - 1)
        out = maps[-1]
        for m in maps[:-1]:
            out = out * torch.sigmoid(m) ** exponent
        return out

    def _upsample(self, flat: Tensor, grid: tuple[int, int]) -> Tensor:
        b, k, _ = flat.shape
        size = self.cfg.output_size
        # The reference upsamples to the configured img_size whatever the input size.
        return F.interpolate(flat.reshape(b, k, *grid), size=(size, size), mode="bilinear", align_corners=False)

    def forward(
        self,
        patch_emb: Tensor,
        global_emb: Tensor,
        text: Tensor,
        upsample: bool = True,
        sinkhorn_options: SinkhornOptions | None = None,
    ) -> HeadOutput:
        """Training-time forward.

        Args:
            patch_emb: (B, C, H, W) L2-normalised patch embeddings from the backbone.
            global_emb: (B, C) L2-normalised global embedding.
            text: (K, N, C) class text embeddings (any float dtype; computed in the embeddings' promoted dtype).
            upsample: False leaves both logit maps at the patch grid, (B, K, H, W).
            sinkhorn_options: backward and stopping groups of every Sinkhorn of the head (MPS path and MPSA
                layers); None: the `sinkhorn` defaults, one stopping test per call over the whole batch.

        Returns:
            HeadOutput with (B, K, S, S) logits, S = cfg.output_size (patch-grid logits with `upsample=False`).
        """
        grid = (patch_emb.shape[2], patch_emb.shape[3])
        memory = patch_emb.flatten(2).transpose(1, 2)  # (B, M, C), row-major over (h, w)
        queries = self.relationship_queries(global_emb, text)

        mps_logits = None
        if self.cfg.use_mps:
            scores = mps_scores(
                memory,
                queries,
                self.cfg.sinkhorn_eps,
                self.cfg.sinkhorn_max_iter,
                self.cfg.sinkhorn_thresh,
                options=sinkhorn_options,
            )
            mps_logits = self._upsample(scores, grid) if upsample else scores.reshape(*scores.shape[:2], *grid)

        x, layer_queries, layer_maps = queries, [], []
        for layer in self.layers:
            x, score_map = layer(x, memory, sinkhorn_options)
            layer_queries.append(x)
            layer_maps.append(score_map)
        combined = self.combine_layer_maps(layer_maps)
        decoder_logits = self._upsample(combined, grid) if upsample else combined.reshape(*combined.shape[:2], *grid)
        upsample_to = None if upsample else self.cfg.output_size
        return HeadOutput(decoder_logits, mps_logits, queries, layer_queries, layer_maps, upsample_to)

    def ensemble_logits(self, out: HeadOutput, options: InferenceOptions | None = None) -> Tensor:
        """OTSeg+ test-time logits: w * decoder + (1 - w) * MPS (decoder alone without the MPS path).

        options: `options.ensemble_weight` is w; None (or its None): `cfg.ensemble_weight`.
        """
        if out.mps_logits is None:
            return out.decoder_logits
        given = None if options is None else options.ensemble_weight
        w = self.cfg.ensemble_weight if given is None else given
        return w * out.decoder_logits + (1.0 - w) * out.mps_logits

    def predict(
        self,
        patch_emb: Tensor,
        global_emb: Tensor,
        text: Tensor,
        seen_mask: Tensor | None,
        options: InferenceOptions | None = None,
    ) -> Tensor:
        """Test-time class scores (B, K, S, S): sigmoid of the ensemble, minus `seen_bias` on seen channels.

        Args:
            seen_mask: (K,) bool, classes that get the seen-class bias; None for no bias.
            options: ensemble weight, seen bias and Sinkhorn modes of this call (`InferenceOptions`); None, or
                a None field: the config's (`cfg.ensemble_weight`, `cfg.seen_bias`, the reference's Sinkhorn).
        """
        options = InferenceOptions() if options is None else options
        # Bilinear upsampling is linear, so blending the two paths on the patch grid and upsampling once equals
        # upsampling both and blending (to float rounding), at half the upsampling cost.
        out = self.forward(patch_emb, global_emb, text, upsample=False, sinkhorn_options=options.sinkhorn)
        grid_logits = self.ensemble_logits(out, options)
        b, k, h, w = grid_logits.shape
        probs = torch.sigmoid(self._upsample(grid_logits.reshape(b, k, -1), (h, w)))
        seen_bias = self.cfg.seen_bias if options.seen_bias is None else options.seen_bias
        if seen_mask is not None and seen_bias:
            bias = seen_mask.to(probs.dtype) * seen_bias
            probs = probs - bias[None, :, None, None]
        return probs
