"""The lean losses and pseudo-labels (a chunk of classes at a time from patch-grid logits) equal the reference's
dense formulation: loss values, acc_seg and pseudo-labels exactly, gradients within 1e-6 relative."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tiny_training
from otseg import OTSeg
from otseg.config import Setting, TrainConfig
from otseg.demo.presets import DemoRecipe, demo_train_config
from otseg.model.head import HeadOutput
from otseg.train.lean_losses import seg_loss_plus_lean, unseen_argmax_lean, upsample_logits
from otseg.train.losses import (
    IGNORE_INDEX,
    count_present_masks,
    one_hot_targets,
    present_classes,
    seg_loss_plus,
)
from otseg.train.objective import UNSEEN_MARK, compute_losses, fill_pseudo_labels, total_loss


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def blocky_labels(batch: int, num_classes: int, size: int, seed: int) -> torch.Tensor:
    """Labels in blocks of 8 px (as objects are), with ignore pixels and classes absent from some images."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, num_classes, (batch, size // 8, size // 8), generator=g)
    labels = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
    labels[:, : size // 4] = IGNORE_INDEX  # a band of ignore pixels (background / padding / unseen)
    labels[0][labels[0] == 1] = IGNORE_INDEX  # class 1 absent from image 0
    return labels


@pytest.mark.parametrize(
    ("batch", "num_classes", "grid", "output_size", "label_size", "chunk_elements"),
    [
        (2, 7, 4, 32, 32, 1),  # one class per chunk
        (2, 7, 4, 32, 32, 3 * 2 * 32 * 32),  # three classes per chunk, the last chunk shorter
        (3, 5, 6, 48, 48, 1 << 30),  # all classes in one chunk
        (2, 6, 4, 40, 32, 2 * 2 * 40 * 40),  # output size != label size: the second resize as seg_loss_plus's
    ],
)
def test_lean_loss_equals_dense(batch, num_classes, grid, output_size, label_size, chunk_elements) -> None:
    torch.manual_seed(0)
    logits = (3 * torch.randn(batch, num_classes, grid, grid)).requires_grad_()
    labels = blocky_labels(batch, num_classes, label_size, seed=1)

    dense_logits = F.interpolate(logits, size=(output_size, output_size), mode="bilinear", align_corners=False)
    dense = seg_loss_plus(dense_logits, labels)
    lean = seg_loss_plus_lean(logits, labels, output_size, chunk_elements=chunk_elements)

    assert set(lean) == set(dense) == {"loss_mask", "loss_dice", "acc_seg"}
    for key in dense:  # the same per-(image, class) rows, reduced in the same order
        assert torch.equal(lean[key], dense[key]), (key, lean[key], dense[key])
    # Each term alone and their sum (what training differentiates) pass the same values through the same
    # operations as the dense path: equal gradients. Other mixtures: equal to float rounding.
    for weights in [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.25, 0.25), (0.3, -2.0)]:
        dense_total = weights[0] * dense["loss_mask"] + weights[1] * dense["loss_dice"]
        lean_total = weights[0] * lean["loss_mask"] + weights[1] * lean["loss_dice"]
        (dense_grad,) = torch.autograd.grad(dense_total, logits, retain_graph=True)
        (lean_grad,) = torch.autograd.grad(lean_total, logits, retain_graph=True)
        if weights == (0.3, -2.0):
            assert relative_difference(lean_grad, dense_grad) < 1e-6
        else:
            assert torch.equal(lean_grad, dense_grad), (weights, relative_difference(lean_grad, dense_grad))


def test_lean_loss_normaliser_override_and_no_grad() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 4, 4, requires_grad=True)
    labels = blocky_labels(2, 4, 16, seed=2)
    num_masks = torch.tensor(2.5)
    dense = seg_loss_plus(upsample_logits(logits, 16, (16, 16)), labels, 20.0, 3.0, num_masks)
    lean = seg_loss_plus_lean(logits, labels, 16, 20.0, 3.0, num_masks)
    assert all(torch.equal(lean[k], dense[k]) for k in dense)
    with torch.no_grad():  # values only: nothing kept for backward
        values = seg_loss_plus_lean(logits, labels, 16, 20.0, 3.0, num_masks)
    assert all(torch.equal(values[k], dense[k]) and not values[k].requires_grad for k in dense)


def test_lean_loss_refuses_out_of_range_labels() -> None:
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"labels contain values \[7\] outside 0..3"):
        seg_loss_plus_lean(torch.zeros(1, 4, 2, 2), labels, 8)


def test_present_classes_without_a_dense_one_hot() -> None:
    labels = blocky_labels(3, 6, 16, seed=3)
    labels[2] = IGNORE_INDEX  # an image with no class at all
    expected = one_hot_targets(labels, 6).flatten(2).amax(dim=2) > 0
    assert torch.equal(present_classes(labels, 6), expected)
    assert not present_classes(labels, 6)[2].any() and not present_classes(labels, 6)[0, 1]
    count = count_present_masks(labels, 6)
    assert count.dtype == torch.float32 and float(count) == float(expected.sum())


@pytest.mark.parametrize("with_mps", [True, False])
def test_lean_pseudo_labels_equal_dense(with_mps: bool) -> None:
    torch.manual_seed(2)
    b, k, grid, size = 2, 9, 4, 32
    decoder, mps = torch.randn(b, k, grid, grid), torch.randn(b, k, grid, grid) if with_mps else None
    seen = [0, 1, 2, 4, 5, 7]
    labels = blocky_labels(b, k, size, seed=4)
    labels[(labels == 3) | (labels == 6) | (labels == 8)] = UNSEEN_MARK
    dense_out = HeadOutput(
        upsample_logits(decoder, size, (size, size)),
        None if mps is None else upsample_logits(mps, size, (size, size)),
        decoder,
    )
    lean_out = HeadOutput(decoder, mps, decoder, upsample_to=size)
    dense = fill_pseudo_labels(labels, dense_out, seen)
    lean = fill_pseudo_labels(labels, lean_out, seen)
    assert torch.equal(lean, dense)
    assert set(lean[labels == UNSEEN_MARK].tolist()) <= {3, 6, 8} and torch.equal(
        lean[labels != UNSEEN_MARK], labels[labels != UNSEEN_MARK]
    )
    # One unseen class per chunk gives the same labels (ties keep the first class, as argmax does).
    assert torch.equal(labels.where(labels != UNSEEN_MARK, unseen_argmax_lean(decoder, mps, [3, 6, 8], size, 1)), lean)


def tiny_model(setting: Setting) -> OTSeg:
    classes = ("a", "b", "c", "d", "e")
    return tiny_training.tiny_model(classes=classes, name="tiny", setting=setting, unseen_classes=(3,))


@pytest.mark.parametrize("setting", ["inductive", "transductive", "fully"])
def test_compute_losses_lean_equals_dense_on_a_model(setting: Setting) -> None:
    model = tiny_model(setting).train()  # dropout on: both runs draw the same masks from the same seed
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    labels = blocky_labels(2, 5, 32, seed=6)
    results = {}
    for formulation in ("dense", "lean"):
        torch.manual_seed(7)
        losses = compute_losses(model, images, labels, losses=formulation)
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(total_loss(losses), params, allow_unused=True, materialize_grads=True)
        results[formulation] = (losses, grads)
    (dense, dense_grads), (lean, lean_grads) = results["dense"], results["lean"]
    assert set(lean) == set(dense) and len(dense) == 6  # decode.* and score.*: loss_mask, loss_dice, acc_seg
    for key in dense:
        torch.testing.assert_close(lean[key], dense[key], rtol=1e-6, atol=0, msg=key)
    for lean_grad, dense_grad in zip(lean_grads, dense_grads, strict=True):
        assert relative_difference(lean_grad, dense_grad) < 1e-6


def test_trainer_default_is_lean_and_the_demo_pins_dense() -> None:
    assert TrainConfig().losses == "lean" and not TrainConfig().checkpoint_backbone
    with pytest.raises(ValueError, match=r"train\.losses"):
        TrainConfig(losses="sparse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown loss formulation"):
        compute_losses(tiny_model("inductive"), torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, 32), losses="x")  # type: ignore[arg-type]
    assert demo_train_config("otseg", "inductive", DemoRecipe(iters=4)).losses == "dense"
