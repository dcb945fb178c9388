"""The demo world generator: determinism, labels consistent with captions, and the seen/unseen split."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from otseg import OTSeg
from otseg.data.datasets import build_custom, read_custom_classes
from otseg.data.transforms import TrainTransform
from otseg.demo.presets import DemoRecipe, demo_data_config, demo_model_config, demo_train_config
from otseg.demo.tiny_clip import TinyClipConfig
from otseg.demo.world import (
    CLASS_NAMES,
    UNSEEN_NAMES,
    WorldConfig,
    generate_world,
    iter_split,
    object_phrase,
    seen_ids,
    unseen_ids,
    world_dir,
)
from otseg.train import objective
from otseg.train.trainer import Trainer

SMALL = WorldConfig(seed=3, num_train=24, num_val=8, num_pretrain=40)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), SMALL)


def test_generation_is_deterministic_and_seeded(world, tmp_path):
    again = generate_world(tmp_path / "again", SMALL)
    assert _digest(world) == _digest(again)  # every file identical, byte for byte
    other = generate_world(tmp_path / "other", WorldConfig(seed=4, num_train=24, num_val=8, num_pretrain=40))
    differ = [k for k, v in _digest(other).items() if k.endswith(".png") and _digest(world).get(k) != v]
    assert len(differ) > 40  # another seed, another world
    # The pretraining corpus (kept in memory) is reproducible too, image by image.
    a = [(img.tobytes(), cap) for _, img, _, _, cap in iter_split(SMALL, "pretrain")]
    b = [(img.tobytes(), cap) for _, img, _, _, cap in iter_split(SMALL, "pretrain")]
    assert a == b


def test_world_dir_caches_by_settings(tmp_path):
    first = world_dir(SMALL, cache=tmp_path)
    mtime = (first / "world.json").stat().st_mtime_ns
    assert world_dir(SMALL, cache=tmp_path) == first
    assert (first / "world.json").stat().st_mtime_ns == mtime  # not regenerated
    assert world_dir(WorldConfig(seed=5, num_train=2, num_val=2), cache=tmp_path) != first


def _names_in(caption: str) -> set[str]:
    return {n for n in CLASS_NAMES if re.search(rf"\b{n}\b", caption)}


def test_labels_are_consistent_with_captions(world):
    for split in ("train", "val"):
        captions = json.loads((world / split / "captions.json").read_text())
        labels = sorted((world / split / "labels").glob("*.png"))
        assert len(labels) == len(captions) > 0
        for path in labels:
            entry = captions[path.stem]
            label = np.asarray(Image.open(path))
            present = {CLASS_NAMES[v] for v in np.unique(label) if v != 255}
            assert present == set(entry["classes"]), path.name
            assert _names_in(entry["caption"]) == present, (path.name, entry["caption"])
            assert 1 <= len(present) <= SMALL.objects[1]
            image = np.asarray(Image.open(world / split / "images" / path.name))
            assert image.shape == (*label.shape, 3) and image.dtype == np.uint8
    # The pretraining captions name exactly the classes visible in their images as well.
    for _, _, label, objects, caption in iter_split(SMALL, "pretrain"):
        present = {CLASS_NAMES[v] for v in np.unique(label) if v != 255}
        assert present == {o.name for o in objects} == _names_in(caption)


def test_pretraining_corpus_covers_every_class_including_unseen():
    cfg = WorldConfig(seed=0, num_pretrain=300)
    counts = dict.fromkeys(CLASS_NAMES, 0)
    for _, _, _, objects, _ in iter_split(cfg, "pretrain"):
        for o in objects:
            counts[o.name] += 1
    assert min(counts.values()) > 20, counts
    assert all(counts[n] > 20 for n in UNSEEN_NAMES)


def test_split_file_is_read_by_the_regular_loader(world):
    classes = read_custom_classes(world)
    assert classes.class_names == CLASS_NAMES
    assert classes.unseen == unseen_ids() and len(classes.unseen) == 4
    # Latin square: every colour and every pattern is unseen exactly once.
    colours = {n.split()[0] for n in UNSEEN_NAMES}
    patterns = {n.split()[1] for n in UNSEEN_NAMES}
    assert len(colours) == len(patterns) == 4


def test_no_unseen_pixels_reach_the_inductive_loss(world, monkeypatch) -> None:
    """Train two steps with the regular Trainer and spy on what the loss receives."""
    clip = TinyClipConfig(vision_width=64, vision_layers=2, text_width=64, text_layers=1, embed_dim=32)
    cfg = demo_model_config("otseg+", "inductive", SMALL, clip)
    torch.manual_seed(0)
    model = OTSeg(cfg)
    model.set_class_embeddings(F.normalize(torch.randn(16, 6, 32), dim=-1))
    train_set = build_custom(world, "train", TrainTransform(demo_data_config(cfg)), seed=0)

    seen_by_loss: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    raw_labels: list[torch.Tensor] = []
    remap, losses = objective.remap_labels, objective.training_losses

    def spy_remap(labels, seen, unseen, setting):
        raw_labels.append(labels.clone())
        return remap(labels, seen, unseen, setting)

    def spy_losses(out, targets, *args, **kwargs):
        seen_by_loss.append((raw_labels[-1], targets.clone(), out.decoder_logits.shape[1]))
        return losses(out, targets, *args, **kwargs)

    monkeypatch.setattr(objective, "remap_labels", spy_remap)
    monkeypatch.setattr(objective, "training_losses", spy_losses)
    recipe = DemoRecipe(iters=3, batch_size=8, warmup_iters=1)
    Trainer(
        model, train_set, demo_train_config("otseg", "inductive", recipe), Path(world).parent / "inductive-run"
    ).train()

    assert len(seen_by_loss) == 3
    unseen = torch.tensor(unseen_ids())
    unseen_pixels = 0
    for raw, targets, channels in seen_by_loss:
        assert channels == len(seen_ids()) == 12  # the loss scores seen classes only
        values = set(torch.unique(targets).tolist())
        assert values <= set(range(12)) | {255}  # indices among the seen classes, or ignore
        is_unseen = torch.isin(raw, unseen)
        unseen_pixels += int(is_unseen.sum())
        assert bool((targets[is_unseen] == 255).all())  # every unseen-class pixel is ignored
        for k, c in enumerate(seen_ids()):  # seen pixels keep their class, renumbered among the seen
            assert bool((targets[raw == c] == k).all())
    assert unseen_pixels > 0  # the batches did contain unseen objects, so the check above was not vacuous


def test_captions_give_the_template_words_their_visual_meaning() -> None:
    """ "portrait" is a close-up, "segment" under half visible, "part" 50-80 % visible, size words whole objects by
    size; the held-out split has seen classes only."""

    seen_words: set[str] = set()
    rng = np.random.default_rng(0)
    for _, image, label, objects, _ in iter_split(WorldConfig(seed=0, num_pretrain=400), "pretrain"):
        for o in objects:
            phrase = object_phrase(rng, o)
            seen_words.update(phrase.split())
            area = int((label == o.class_id).sum())
            assert abs(o.visible - area / o.full_area) < 1e-9
            if phrase.startswith("a portrait of"):
                assert o.portrait and len(objects) == 1 and area > 0.2 * image.shape[0] * image.shape[1]
            elif phrase.startswith("a segment of"):
                assert o.visible < 0.5
            elif phrase.startswith("a part of"):
                assert 0.5 <= o.visible < 0.8
            elif phrase.split()[0] in ("small", "medium", "large"):
                assert o.visible >= 0.8
                assert phrase.split()[0] == ("small" if o.size < 20 else "large" if o.size > 30 else "medium")
    assert {"portrait", "segment", "part", "small", "medium", "large"} <= seen_words
    held_out = {int(v) for _, _, label, _, _ in iter_split(WorldConfig(num_holdout=30), "holdout") for v in
                np.unique(label) if v != 255}  # fmt: skip
    assert held_out and held_out <= set(seen_ids())
