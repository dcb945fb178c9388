"""Activation checkpointing of the prompted ViT's blocks: the same outputs and gradients, fewer saved tensors."""

from __future__ import annotations

import torch

from otseg.clip.vpt import VPTVisionTransformer
from otseg.config import VisionConfig


def saved_bytes_and_grads(model: VPTVisionTransformer, images: torch.Tensor) -> tuple[int, list[torch.Tensor]]:
    """Bytes autograd keeps for backward outside checkpointed regions, and the prompt gradients."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        patches, global_emb = model(images)
    loss = patches.square().sum() + global_emb.sum()
    params = [p for p in model.parameters() if p.requires_grad]
    return saved, list(torch.autograd.grad(loss, params))


def test_checkpointed_blocks_give_the_same_gradients_and_save_less() -> None:
    torch.manual_seed(0)
    cfg = VisionConfig(image_size=64, patch_size=16, width=32, layers=4, heads=2, output_dim=16,
                       num_prompt_tokens=3, deep_prompt_layers=2, prompt_dropout=0.0)  # fmt: skip
    model = VPTVisionTransformer(cfg)
    for name, p in model.named_parameters():
        p.requires_grad_("prompt" in name)  # the training rule: only the prompts learn
    images = torch.randn(2, 3, 64, 64)
    plain_bytes, plain_grads = saved_bytes_and_grads(model, images)
    model.checkpoint_blocks = True
    ckpt_bytes, ckpt_grads = saved_bytes_and_grads(model, images)
    assert len(plain_grads) == 6 and all(g.abs().sum() > 0 for g in plain_grads)
    for a, b in zip(ckpt_grads, plain_grads, strict=True):
        assert torch.equal(a, b)  # recomputing a block in backward reproduces its forward exactly
    assert ckpt_bytes < plain_bytes / 3, (ckpt_bytes, plain_bytes)
    with torch.no_grad():  # inference does not checkpoint (nothing is saved anyway)
        out = model(images)
    model.checkpoint_blocks = False
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(out, model(images), strict=True))
