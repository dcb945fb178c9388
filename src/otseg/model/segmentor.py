"""The OTSeg segmentor: VPT CLIP image tower + class text embeddings + decode head, with reference inference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from otseg.clip.text import TextEncoder
from otseg.clip.vpt import VPTVisionTransformer
from otseg.config import ModelConfig, resolve_templates
from otseg.errors import BadModelError, BadValueError
from otseg.model.head import HeadOutput, OTSegHead
from otseg.model.inference_options import InferenceOptions
from otseg.model.precision import Precision, check_precision, image_tower_autocast
from otseg.model.text import compute_class_embeddings, validate_class_names
from otseg.ops.sinkhorn_options import SinkhornOptions

__all__ = ["OTSeg", "slide_windows"]


def slide_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """The reference's sliding-window grid: (y1, y2, x1, x2) crops, clamped to the image border."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
            windows.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return windows


class OTSeg(nn.Module):
    """OTSeg zero-shot semantic segmentor.

    Holds the frozen CLIP ViT with trainable deep visual prompts (`backbone`), the decode head (`head`),
    the class text embeddings (`class_embeddings`, (K, N, D)), which classes are "seen" (`seen_mask`), and
    optionally the frozen CLIP text tower (`text_encoder`) to embed new class names.

    Images are float tensors (B, 3, H, W) normalised with `config.mean` / `config.std` (0..255 scale).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = VPTVisionTransformer(config.vision)
        self.head = OTSegHead(config.head)
        self.text_encoder: TextEncoder | None = None
        k, n, d = config.num_classes, config.num_prompts, config.head.embed_dim
        self.class_embeddings: Tensor  # (K, N, D), a buffer: it follows the model's device
        self.register_buffer("class_embeddings", torch.zeros(k, n, d), persistent=False)
        seen = torch.zeros(k, dtype=torch.bool)
        seen[list(config.seen_classes)] = True
        self.seen_mask: Tensor  # (K,) bool, a buffer
        self.register_buffer("seen_mask", seen, persistent=False)
        self._seen_ids = list(config.seen_classes)  # seen_mask as Python ints (see training_text); no tensor read
        self.class_names: list[str] = list(config.class_names)
        self.has_class_embeddings = False
        self.apply_freezing()

    # ------------------------------------------------------------------ parameters
    def apply_freezing(self) -> None:
        """The reference rule: backbone trainable only where the name contains 'prompt'; text tower frozen."""
        for name, p in self.backbone.named_parameters():
            p.requires_grad_("prompt" in name)
        if self.text_encoder is not None:
            self.text_encoder.requires_grad_(False)

    def attach_text_encoder(self, text_encoder: TextEncoder) -> None:
        """Keep a (frozen) CLIP text tower so that `set_classes` can embed new class names."""
        self.text_encoder = text_encoder.requires_grad_(False).eval()

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------ classes
    @property
    def num_classes(self) -> int:
        return self.class_embeddings.shape[0]

    def set_class_embeddings(
        self,
        emb: Tensor | np.ndarray,
        class_names: Sequence[str] | None = None,
        seen: Sequence[int] | Tensor | None = None,
    ) -> None:
        """Use these class text embeddings for prediction.

        Args:
            emb: (K, N, D) per-class, per-prompt embeddings (L2-normalised, as the reference's `.npy` files).
                float16 values are kept exactly (upcast to float32, as the reference's type promotion does).
            class_names: K names (for outputs); default: the current names if K is unchanged, else class_0...
            seen: indices of classes that get the seen-class bias at inference. Default: the preset's seen
                classes when K matches the preset, else the classes whose name is a seen training class.
        """
        t = torch.as_tensor(np.asarray(emb) if not isinstance(emb, Tensor) else emb)
        if t.dim() != 3:
            raise BadValueError(f"class embeddings must have shape (K, N, D), got {tuple(t.shape)}")
        if not t.is_floating_point():  # integer "embeddings" would be cast silently and score as nonsense
            raise BadValueError(f"class embeddings must be floating point, got {t.dtype}")
        d = self.config.head.embed_dim
        if t.shape[2] != d:
            raise BadValueError(f"class embeddings have width {t.shape[2]} but the model expects {d}")
        if t.shape[0] == 0:
            raise BadValueError("class embeddings are empty (K = 0): give at least one class")
        k = t.shape[0]
        if class_names is None:
            class_names = self.class_names if k == len(self.class_names) else [f"class_{i}" for i in range(k)]
        if len(class_names) != k:
            raise BadValueError(f"{len(class_names)} class names for {k} class embeddings")
        self.class_embeddings = t.to(device=self.class_embeddings.device, dtype=torch.float32).contiguous()
        self.class_names = list(class_names)
        self.seen_mask = self._seen_mask_for(self.class_names, seen).to(self.class_embeddings.device)
        self._seen_ids = self.seen_mask.nonzero().flatten().tolist()
        self.has_class_embeddings = True

    def _seen_mask_for(self, names: Sequence[str], seen: Sequence[int] | Tensor | None) -> Tensor:
        mask = torch.zeros(len(names), dtype=torch.bool)
        if seen is not None:
            mask[torch.as_tensor(seen, dtype=torch.long)] = True
            return mask
        cfg = self.config
        if list(names) == list(cfg.class_names):
            mask[list(cfg.seen_classes)] = True
        else:
            trained = {cfg.class_names[i] for i in cfg.seen_classes}
            mask = torch.tensor([n in trained for n in names], dtype=torch.bool)
        return mask

    def set_classes(self, names: Sequence[str], templates: Sequence[str] | str | None = None) -> None:
        """Embed `names` live with the CLIP text tower (cached on disk) and use them for prediction.

        Args:
            names: class names, e.g. ["cat", "sofa", "wall"].
            templates: prompt templates with one "{}" each, or a template-set name ("templates_6"); default:
                the preset's set. The number of templates is the number of prompts N.
        """
        if self.text_encoder is None:
            raise BadModelError(
                "this model has no CLIP text tower, so it cannot embed class names; build it with CLIP weights "
                "(build_model(..., clip='ViT-B-16.pt')) or call set_class_embeddings() with precomputed ones"
            )
        names = validate_class_names(names)
        chosen = resolve_templates(templates if templates is not None else self.config.templates)
        emb = compute_class_embeddings(self.text_encoder, names, chosen)
        self.set_class_embeddings(emb, class_names=names)

    def _require_embeddings(self) -> None:
        if not self.has_class_embeddings:
            raise BadModelError(
                "no class text embeddings set: call model.set_class_embeddings(emb), model.set_classes(names), "
                "or load the reference .npy with otseg.load_class_embeddings(path)"
            )

    def training_text(self) -> Tensor:
        """(K_train, N, D) text used in training: the seen classes only when training inductively."""
        self._require_embeddings()
        if self.config.setting == "inductive":
            # Indexed by the seen ids as Python ints, not by the mask: a mask gives a shape that depends on data,
            # which torch.compile cannot trace (a graph break); the ids are known when the graph is traced.
            return self.class_embeddings[self._seen_ids]
        return self.class_embeddings

    # ------------------------------------------------------------------ forward passes
    def forward(
        self,
        images: Tensor,
        text: Tensor | None = None,
        sinkhorn_options: SinkhornOptions | None = None,
        upsample: bool = True,
    ) -> HeadOutput:
        """Training-time forward: logits of both paths at (S, S), S = config.head.output_size.

        Args:
            images: (B, 3, H, W) normalised images.
            text: (K, N, D) class embeddings; default `training_text()`.
            sinkhorn_options: the Sinkhorn backward and stopping groups (`otseg.ops.SinkhornOptions`; the
                trainer passes the training config's); None: the `sinkhorn` defaults.
            upsample: False leaves the logits at the patch grid (what the lean losses take).
        """
        patch_emb, global_emb = self.backbone(images)
        text = self.training_text() if text is None else text
        return self.head(patch_emb, global_emb, text, upsample=upsample, sinkhorn_options=sinkhorn_options)

    def _classes(self, classes: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        """(class embeddings (K, N, D), seen mask (K,)): the given pair, else the stored ones."""
        if classes is not None:
            return classes
        self._require_embeddings()
        return self.class_embeddings, self.seen_mask

    def encode_decode(
        self,
        images: Tensor,
        classes: tuple[Tensor, Tensor] | None = None,
        precision: Precision = "float32",
        options: InferenceOptions | None = None,
    ) -> Tensor:
        """Test-time scores over all classes for whole images: (B, K, H, W) (the reference's `encode_decode`).

        classes: (embeddings (K, N, D), seen mask (K,) bool) to score instead of the stored class set; the
        model is left unchanged (what `Predictor` uses, so that concurrent calls cannot disturb each other).
        precision: "bf16" runs the image tower under bfloat16 autocast; the head and the scores stay float32
        (`otseg.model.precision`).
        options: ensemble weight, seen bias and Sinkhorn modes of this call (`InferenceOptions`); None: the
        config's. The model's config is never changed.
        """
        options = InferenceOptions() if options is None else options
        text, seen_mask = self._classes(classes)
        if precision == "float32":
            patch_emb, global_emb = self.backbone(images)
        else:
            with image_tower_autocast(precision, images.device):
                patch_emb, global_emb = self.backbone(images)
            patch_emb, global_emb = patch_emb.float(), global_emb.float()
        # The config's bias applies only in its settings (not after self-training); a bias given in the options does.
        seen = seen_mask if self.config.apply_seen_bias or options.seen_bias is not None else None
        scores = self.head.predict(patch_emb, global_emb, text, seen, options)
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def slide_inference(
        self,
        images: Tensor,
        out_size: tuple[int, int] | None = None,
        classes: tuple[Tensor, Tensor] | None = None,
        precision: Precision = "float32",
        options: InferenceOptions | None = None,
    ) -> Tensor:
        """Average `encode_decode` over overlapping crops (config crop_size/stride), resized to `out_size`.

        images (B, 3, H, W) -> (B, K, *out_size) (default: (H, W)). `classes`, `precision` and `options` as in
        `encode_decode`.
        """
        classes = self._classes(classes)
        b, _, h, w = images.shape
        crop, stride = self.config.crop_size, self.config.stride
        total = images.new_zeros((b, classes[0].shape[0], h, w))
        count = images.new_zeros((1, 1, h, w))
        for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
            total[:, :, y1:y2, x1:x2] += self.encode_decode(images[:, :, y1:y2, x1:x2], classes, precision, options)
            count[:, :, y1:y2, x1:x2] += 1
        scores = total / count
        if out_size is not None and tuple(out_size) != (h, w):
            scores = F.interpolate(scores, size=tuple(out_size), mode="bilinear", align_corners=False)
        return scores

    @torch.no_grad()
    def predict_scores(
        self,
        images: Tensor,
        classes: tuple[Tensor, Tensor] | None = None,
        precision: Precision = "float32",
        options: InferenceOptions | None = None,
    ) -> Tensor:
        """The reference's test-time class scores, before argmax.

        Scores are sigmoid(w * decoder + (1 - w) * MPS) minus the seen-class bias (w and the bias: the config's,
        or this call's `options`), averaged over sliding windows when the preset says so. Runs in eval mode (the
        model's mode is restored afterwards). Images are processed one at a time, as the reference evaluates with
        batch size 1 (its Sinkhorn stopping rule is global over the batch, so batching would change results).

        Args:
            images: (B, 3, H, W) normalised as `config.mean`/`config.std`, any size.
            classes: (embeddings (K, N, D), seen mask (K,) bool) to score instead of the stored class set
                (the model is not changed); default: the stored class set.
            precision: "float32" (default) or "bf16": the image tower under bfloat16 autocast, the head and the
                scores in float32 (`otseg.model.precision`).
            options: ensemble weight, seen bias and Sinkhorn modes of this call (`InferenceOptions`), e.g.
                `InferenceOptions(ensemble_weight=1.0)` scores plain OTSeg with an OTSeg+ model; None: the
                config's. The model's config is never changed.

        Returns:
            (B, K, H, W) float32 scores; argmax over K gives the label map.
        """
        precision = check_precision(precision)
        if options is not None and not isinstance(options, InferenceOptions):
            raise TypeError(f"options must be an otseg InferenceOptions, got {type(options).__name__}")
        classes = self._classes(classes)
        if images.dim() != 4 or images.shape[1] != 3:
            raise BadValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        was_training = self.training
        self.eval()  # dropout off whatever mode the caller left the model in
        try:
            if self.config.test_mode == "slide":
                return torch.cat(
                    [
                        self.slide_inference(images[i : i + 1], classes=classes, precision=precision, options=options)
                        for i in range(len(images))
                    ]
                )
            return torch.cat(
                [self.encode_decode(images[i : i + 1], classes, precision, options) for i in range(len(images))]
            )
        finally:
            self.train(was_training)
