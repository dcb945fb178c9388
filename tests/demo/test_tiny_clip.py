"""The tiny CLIP: pretraining runs, the compact pack rebuilds the state dict exactly, the shipped pack is intact."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from otseg.clip.loading import infer_clip_configs
from otseg.demo import tiny_clip
from otseg.demo.tiny_clip import (
    SHIPPED_PACK,
    TinyClipConfig,
    initial_token_table,
    pack_state,
    state_digest,
    train_tiny_clip,
    unpack_state,
)
from otseg.demo.world import WorldConfig
from otseg.formats.openai_clip import read_clip_state_dict

WORLD = WorldConfig(seed=0, num_train=4, num_val=4, num_pretrain=48)
CLIP = TinyClipConfig(steps=3, batch_size=16)


@pytest.fixture(scope="module")
def trained() -> dict[str, torch.Tensor]:
    model, info = train_tiny_clip(WORLD, CLIP, progress=False)
    assert info["loss_first_20"] > 0 and info["pretraining_images"] == 48
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def test_untouched_token_rows_keep_their_reproducible_init(trained):
    init = initial_token_table(CLIP)
    assert torch.equal(init, initial_token_table(CLIP))  # NumPy's frozen legacy stream: the same every time
    moved = (trained["token_embedding.weight"] != init).any(dim=1)
    assert 0 < int(moved.sum()) < 200  # the captions' few dozen tokens moved, the other ~49k rows did not


def test_pack_rebuilds_the_state_dict_bit_for_bit(trained, tmp_path):
    tensors, metadata = pack_state(trained, CLIP, "some-key", {"note": "test"})
    assert "token_embedding.weight" not in tensors and tensors["token_embedding.values"].shape[0] < 200
    path = tmp_path / "pack.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    full_bytes = sum(t.numel() * t.element_size() for t in trained.values())
    assert path.stat().st_size < 0.3 * full_bytes  # the 49408 x 64 token table is most of a tiny CLIP
    state, meta = unpack_state(path)
    assert set(state) == set(trained) and all(torch.equal(state[k], trained[k]) for k in trained)
    assert meta["sha256"] == state_digest(trained) and meta["key"] == "some-key"

    # A damaged pack is refused with a message naming the file and the fix.
    tensors["ln_final.weight"] = tensors["ln_final.weight"] + 1e-3
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match=r"pack.safetensors.*damaged.*python -m otseg.demo.rebuild tiny-clip"):
        unpack_state(path)


def test_tiny_clip_path_unpacks_a_pack_with_a_matching_key(trained, tmp_path, monkeypatch):
    key = CLIP.key(WORLD)
    tensors, metadata = pack_state(trained, CLIP, key, {"zero_shot": {"accuracy_seen": 1.0}})
    pack = tmp_path / "shipped.safetensors"
    save_file(tensors, str(pack), metadata=metadata)
    monkeypatch.setattr(tiny_clip, "SHIPPED_PACK", pack)
    monkeypatch.setattr(tiny_clip, "train_tiny_clip", lambda *a, **k: pytest.fail("pretrained instead of unpacked"))
    path = tiny_clip.tiny_clip_path(WORLD, CLIP, cache=tmp_path / "cache", progress=False)
    state = read_clip_state_dict(path)  # the regular OpenAI-format loader reads the result
    assert all(torch.equal(state[k], trained[k]) for k in trained if k != "logit_scale")
    # Every world seed shares the CLIP (its corpus has its own seed), so no other seed pretrains again.
    other_world = dataclasses.replace(WORLD, seed=7)
    assert tiny_clip.tiny_clip_path(other_world, CLIP, cache=tmp_path / "cache") == path


def test_the_shipped_pack_is_the_default_recipe_and_intact():
    if not SHIPPED_PACK.is_file():
        pytest.fail(f"{SHIPPED_PACK} is missing: the package must ship the default tiny CLIP")
    state, meta = unpack_state(SHIPPED_PACK)  # checks the recorded SHA-256
    assert meta["key"] == TinyClipConfig().key(WorldConfig())
    vision, text = infer_clip_configs(state)
    cfg = TinyClipConfig()
    assert (vision.width, vision.layers, vision.patch_size) == (cfg.vision_width, cfg.vision_layers, cfg.patch_size)
    assert (text.width, text.layers, text.output_dim) == (cfg.text_width, cfg.text_layers, cfg.embed_dim)


def test_temperature_is_held_at_clips_clamp():
    """The logit scale starts at CLIP's clamp of 100 and, by default, is not trained (see TinyClipConfig)."""
    model, _ = train_tiny_clip(WORLD, CLIP, progress=False)
    assert float(model.logit_scale.detach().exp()) == pytest.approx(100.0, rel=1e-6)
    learnt, _ = train_tiny_clip(WORLD, dataclasses.replace(CLIP, learn_logit_scale=True), progress=False)
    assert float(learnt.logit_scale.detach().exp()) != pytest.approx(100.0, rel=1e-6)
