"""InferenceOptions: test-time settings given to a call score as a config holding them would, and no config is
edited (ensemble weight, seen bias, Sinkhorn modes)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from conftest import make_tiny_model
from otseg import OTSeg
from otseg.model.inference_options import InferenceOptions
from otseg.ops import SinkhornOptions, record_sinkhorn_calls


def _images() -> torch.Tensor:
    return torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5)) * 40


def _twin(model: OTSeg, **head_changes: Any) -> OTSeg:
    """The same weights and classes under a config whose head has `head_changes`."""
    config = dataclasses.replace(model.config, head=dataclasses.replace(model.config.head, **head_changes))
    twin = OTSeg(config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("text_encoder.")}
    twin.load_state_dict(state, strict=True)
    twin.set_class_embeddings(model.class_embeddings, model.class_names, seen=model.seen_mask.nonzero().flatten())
    return twin.eval()


@pytest.fixture(scope="module")
def model() -> OTSeg:
    return make_tiny_model()


@pytest.mark.parametrize(
    "changes", [{"ensemble_weight": 1.0}, {"ensemble_weight": 0.0}, {"seen_bias": 0.0}, {"seen_bias": 0.3}]
)
def test_options_score_as_a_config_holding_them(model: OTSeg, changes: dict[str, Any]) -> None:
    images = _images()
    before = model.config.to_dict()
    given = model.predict_scores(images, options=InferenceOptions(**changes))
    assert torch.equal(given, _twin(model, **changes).predict_scores(images))
    assert not torch.equal(given, model.predict_scores(images))  # the option changed something
    assert model.config.to_dict() == before  # and nothing was written into the model's config


def test_no_options_and_empty_options_are_the_config(model: OTSeg) -> None:
    images = _images()
    default = model.predict_scores(images)
    assert torch.equal(default, model.predict_scores(images, options=InferenceOptions()))
    assert torch.equal(default, model.predict_scores(images, options=InferenceOptions(ensemble_weight=0.5)))
    with torch.no_grad():
        whole = model.encode_decode(images[..., :64])
        assert torch.equal(whole, model.encode_decode(images[..., :64], options=InferenceOptions(seen_bias=0.1)))


def test_a_given_seen_bias_applies_after_self_training_too() -> None:
    # Transductive models get no bias from their config (the reference); a bias given to the call is applied.
    model = make_tiny_model(setting="transductive")
    images = _images()
    plain = model.predict_scores(images)
    biased = model.predict_scores(images, options=InferenceOptions(seen_bias=0.2))
    seen = model.seen_mask
    assert seen.any() and (~seen).any()
    torch.testing.assert_close(plain[:, seen] - biased[:, seen], torch.full_like(plain[:, seen], 0.2))
    assert torch.equal(plain[:, ~seen], biased[:, ~seen])


def test_sinkhorn_modes_reach_every_call_of_the_head(model: OTSeg) -> None:
    images = _images()
    fixed = InferenceOptions(sinkhorn=SinkhornOptions(fixed_iters=3))
    with record_sinkhorn_calls() as calls:
        scores = model.predict_scores(images, options=fixed)
    # Per window: the MPS path and 3 MPSA layers, each at exactly 3 iterations.
    assert calls and len(calls) % 4 == 0 and {c.iterations for c in calls} == {3}
    with record_sinkhorn_calls() as default_calls:
        default = model.predict_scores(images)
    assert {c.iterations for c in default_calls} != {3}
    assert not torch.equal(scores, default)


def test_head_ensemble_logits_takes_the_weight_of_the_options(model: OTSeg) -> None:
    torch.manual_seed(0)
    patch = torch.nn.functional.normalize(torch.randn(1, 32, 4, 4), dim=1)
    global_emb = torch.nn.functional.normalize(torch.randn(1, 32), dim=-1)
    with torch.no_grad():
        out = model.head(patch, global_emb, model.class_embeddings, upsample=False)
    weighted = model.head.ensemble_logits(out, InferenceOptions(ensemble_weight=0.3))
    torch.testing.assert_close(weighted, 0.3 * out.decoder_logits + 0.7 * out.mps_logits)
    assert out.mps_logits is not None
    config_weight = model.config.head.ensemble_weight
    expected = config_weight * out.decoder_logits + (1 - config_weight) * out.mps_logits
    assert torch.equal(model.head.ensemble_logits(out), expected)
    assert torch.equal(model.head.ensemble_logits(out, InferenceOptions()), expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"ensemble_weight": 1.5}, "ensemble_weight"), ({"ensemble_weight": -0.1}, "ensemble_weight"),
     ({"ensemble_weight": True}, "ensemble_weight"), ({"ensemble_weight": float("nan")}, "ensemble_weight"),
     ({"seen_bias": float("inf")}, "seen_bias"), ({"seen_bias": "0.1"}, "seen_bias")],
)  # fmt: skip
def test_options_are_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InferenceOptions(**kwargs)


def test_options_are_frozen_and_typed(model: OTSeg) -> None:
    options = InferenceOptions(ensemble_weight=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.ensemble_weight = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError, match="SinkhornOptions"):
        InferenceOptions(sinkhorn={"fixed_iters": 3})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="InferenceOptions"):
        model.predict_scores(_images(), options={"ensemble_weight": 1.0})  # type: ignore[arg-type]
