"""A very short end-to-end run of `otseg demo` (quick sizes: every stage runs, the numbers mean nothing)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from otseg import Predictor
from otseg.cli import demo as demo_command
from otseg.clip.loading import infer_clip_configs
from otseg.demo.presets import (
    SCHEDULES,
    DemoRecipe,
    DemoSettings,
    demo_model_config,
    demo_train_config,
    transductive_init_step,
)
from otseg.demo.pretrained import (
    SHIPPED_MODEL,
    _model_tensors,
    _pack_metadata,
    _train,
    demo_model_dir,
    demo_model_key,
    pack_demo_model,
    unpack_demo_model,
)
from otseg.demo.scoring import unbiased_and_seen_only_metrics, unbiased_metrics
from otseg.demo.tiny_clip import SHIPPED_PACK, tiny_clip_path
from otseg.demo.tiny_clip import _pack_metadata as clip_pack_metadata
from otseg.demo.training import build_demo_model, demo_datasets
from otseg.demo.world import CLASS_NAMES, unseen_ids, world_dir
from otseg.eval.evaluate import evaluate
from otseg.formats.openai_clip import read_clip_state_dict
from otseg.model.inference_options import InferenceOptions

METHODS = {"zegclip", "otseg", "otseg+"}
SETTINGS = {"inductive", "transductive", "fully"}


def _demo(out, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    demo_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--out", str(out), "--quick", "--no-progress", "--seed", "1", *extra])
    assert args.run is demo_command.run
    return args.run(args)


def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    # Two worker processes, one thread each: the schedule the full demo uses on 2 cores.
    assert _demo(tmp_path / "demo", "--workers", "2", "--threads", "1") == 0

    out = tmp_path / "demo"
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 11
    assert {(r["method"], r["setting"]) for r in rows} == {(m, s) for m in METHODS for s in SETTINGS} | {
        ("control", "inductive"),
        ("training-free", "inductive"),
    }
    for r in rows:
        assert set(r) == {"method", "setting", "miou_seen", "miou_unseen", "hiou"}
        for key in ("miou_seen", "miou_unseen", "hiou"):
            assert r[key] is None or 0.0 <= r[key] <= 100.0

    printed = capsys.readouterr().out
    assert "| method | setting | mIoU(S) | mIoU(U) | hIoU |" in printed
    assert "| control | inductive |" in printed and "seed 1" in printed
    assert "| training-free | inductive |" in printed
    assert printed.index("[world card]") < printed.index("[train]")  # the card is printed before training

    info = json.loads((out / "demo_info.json").read_text())
    card = info["world_card"]
    assert {"prompt_spread_ratio", "between_class_cosine", "linear_probe_miou", "tiny_clip_pretraining"} <= set(card)
    assert "InfoNCE" in card["tiny_clip_pretraining"] and "no dense" in card["tiny_clip_pretraining"]
    assert card["training_free"] == rows[0] and rows[0]["method"] == "training-free"
    # Every inductive row also at bias 0 (the training-free row has no bias to remove).
    assert {(r["method"], r["setting"]) for r in info["rows_bias0"]} == {
        (m, "inductive") for m in ("training-free", *METHODS, "control")
    }
    # The held-out curves: 2 evaluations per run (quick recipe), and the picture.
    assert set(info["curves"]) == {f"{a}-{s}" for a in ("zegclip", "otseg") for s in SETTINGS}
    assert all(len(c) == 2 for c in info["curves"].values())
    # Two evaluations give a largest change but too few points for a trend line.
    assert set(info["convergence_trend_last20_points"]) == set(info["curves"])
    assert all(t is None for t in info["convergence_trend_last20_points"].values())
    assert (out / "curves.png").is_file()
    assert info["seed"] == 1 and set(info["timings_s"]) >= {"world", "tiny_clip", "total"}
    assert info["schedule"] is None  # the quick sizes are no named schedule
    # The tiny CLIP is a plain OpenAI-format state dict that the regular loader reads and sizes on its own.
    sd = read_clip_state_dict(info["tiny_clip"])
    vision, text = infer_clip_configs(sd)
    assert vision.image_size == 64 and vision.patch_size == 8 and text.context_length == 77
    # Transductive training started from the inductive weights.
    config = json.loads((out / "runs" / "otseg-transductive" / "config.json").read_text())
    assert config["train"]["init_from"].endswith("otseg-inductive/iter_2.pt")

    panels = sorted((out / "panels").glob("*.png"))
    assert len(panels) == 3 * min(4, info["settings"]["world"]["num_val"])  # curves.png is beside, not here
    with Image.open(panels[0]) as im:
        assert im.width > 5 * 64 * 4  # image, ground truth and three or four predictions, then the legend
    assert len(info["classes"]) == len(CLASS_NAMES)
    assert info["workers"] == 2 and info["threads_per_worker"] == 1

    # Several seeds: each seed's table in its folder, then mean ± std per cell. Seed 1 gives the same numbers run
    # one job after another in this process: the schedule does not matter.
    assert _demo(tmp_path / "seeds", "--seeds", "1,2", "--workers", "1", "--threads", "1") == 0
    assert json.loads((tmp_path / "seeds" / "seed_1" / "results.json").read_text()) == rows
    seed_2 = json.loads((tmp_path / "seeds" / "seed_2" / "results.json").read_text())
    summary = json.loads((tmp_path / "seeds" / "results.json").read_text())
    assert [(r["method"], r["setting"]) for r in summary] == [(r["method"], r["setting"]) for r in rows]
    for mean, a, b in zip(summary, rows, seed_2, strict=True):
        for key in ("miou_seen", "miou_unseen", "hiou"):
            values = [v for v in (a[key], b[key]) if v is not None]
            assert mean[key] == (round(sum(values) / len(values), 2) if values else None)
            assert (mean[f"{key}_std"] is None) == (len(values) < 2)
    assert "±" in (tmp_path / "seeds" / "table.md").read_text()
    convergence = json.loads((tmp_path / "seeds" / "seeds_info.json").read_text())["convergence"]
    assert set(convergence) == {"seed_1", "seed_2"}
    assert {k: v[0] for k, v in convergence["seed_1"].items()} == info["convergence_last20_points"]
    assert "held-out curves converged" in capsys.readouterr().out
    # Resumable: finished seeds are read back, not run again.
    assert _demo(tmp_path / "seeds", "--seeds", "1,2", "--workers", "1") == 0
    assert "seed 2: finished earlier with the same settings" in capsys.readouterr().out
    assert json.loads((tmp_path / "seeds" / "results.json").read_text()) == summary


def test_demo_model_for_the_predictor(tmp_path, capsys):
    """The "demo" model: built on first use (here at quick sizes), then cached; a Predictor segments with it."""

    settings = DemoSettings.quick(seed=2)
    path = demo_model_dir(settings=settings, cache=tmp_path, progress=False)
    assert "building the demo model" in capsys.readouterr().out
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert demo_model_dir(settings=settings, cache=tmp_path, progress=False) == path  # cached: no rebuild
    assert "building" not in capsys.readouterr().out

    predictor = Predictor.from_pretrained(path)
    assert predictor.default_class_names == list(CLASS_NAMES)
    # The model knows its world's words only, and says so once per class list when a name uses others.
    assert predictor.vocabulary is not None and {"red", "striped", "portrait"} <= predictor.vocabulary
    assert predictor.vocabulary_note(["red striped", "blue dotted"]) is None
    note = predictor.vocabulary_note(["red striped", "a brand new name"])
    assert note is not None and "'brand', 'name', 'new' are new to it" in note and "red" in note
    assert predictor.model.config.head.ensemble_weight == 0.5  # OTSeg+
    image = np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match="new to it"):
        result = predictor.predict(image, ["red striped", "a brand new name"])
    assert result.note == note
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the same list again is quiet
        again = predictor.predict(image, ["red striped", "a brand new name"])
    assert again.note == note
    assert result.labels.shape == (80, 100) and result.scores.shape == (2, 80, 100)
    # Names are matched to the training split: "red striped" is a seen class, the new name is not.
    assert result.seen_mask.tolist() == [True, False]


def test_demo_model_pack_round_trip(tmp_path):
    """The shipped form of the demo model: only what training changed is stored, the frozen towers come from the
    tiny CLIP, and unpacking rebuilds every tensor bit for bit (a damaged pack is refused)."""

    settings = DemoSettings.quick(seed=3)
    clip_state = read_clip_state_dict(tiny_clip_path(settings.world, settings.clip, cache=tmp_path, progress=False))
    model = _train(settings, clip_state, tmp_path, progress=False)
    tensors, metadata = pack_demo_model(model, settings, clip_state)
    assert not any(k.startswith(("text_encoder.", "backbone.transformer.")) for k in tensors)  # frozen: not stored
    assert any(k.startswith("head.") for k in tensors) and "class_embeddings" in tensors
    save_file(tensors, tmp_path / "pack.safetensors", metadata=metadata)
    rebuilt, extra = unpack_demo_model(tmp_path / "pack.safetensors", clip_state)
    original, again = _model_tensors(model), _model_tensors(rebuilt)
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)
    assert rebuilt.config.head.ensemble_weight == 0.5 and "striped" in extra["vocabulary"]

    key = next(k for k in tensors if k.startswith("head."))
    damaged = dict(tensors)
    damaged[key] = tensors[key].clone()
    damaged[key].view(-1)[0] += 1.0
    save_file(damaged, tmp_path / "damaged.safetensors", metadata=metadata)
    with pytest.raises(ValueError, match="damaged"):
        unpack_demo_model(tmp_path / "damaged.safetensors", clip_state)

    # The batched, bias-free scoring of the curves and bias-0 rows equals the regular evaluator at bias 0.

    _, val_set = demo_datasets(settings, world_dir(settings.world, tmp_path))
    fast = unbiased_metrics(model, val_set, batch_size=4)
    assert model.head.cfg.seen_bias == 0.1  # the bias-free scoring passes options: the config is not edited
    regular = evaluate(model, val_set, progress=False, options=InferenceOptions(seen_bias=0.0))
    assert fast["per_class_iou"] == regular["per_class_iou"]
    # The other inference options go through too (plain OTSeg's decoder path alone, still bias-free).
    decoder_only = InferenceOptions(ensemble_weight=1.0)
    fast_decoder = unbiased_metrics(model, val_set, batch_size=4, options=decoder_only)
    regular_decoder = evaluate(
        model, val_set, progress=False, options=InferenceOptions(ensemble_weight=1.0, seen_bias=0.0)
    )
    assert fast_decoder["per_class_iou"] == regular_decoder["per_class_iou"] != fast["per_class_iou"]
    # Scored over the seen classes alone, no pixel goes to an unseen class.

    same_pass, seen_only = unbiased_and_seen_only_metrics(model, val_set, batch_size=4)
    assert same_pass == fast
    assert any(regular["per_class_acc"][CLASS_NAMES[i]] for i in unseen_ids())  # the model does predict unseen ones
    assert all(seen_only["per_class_iou"][CLASS_NAMES[i]] in (0.0, None) for i in unseen_ids())


def test_shipped_demo_model_matches_the_default_recipe():
    """The package ships the demo model for the default recipe (so "demo" loads in seconds, with no training)."""

    assert SHIPPED_MODEL.is_file()
    assert _pack_metadata(SHIPPED_MODEL)["key"] == demo_model_key(DemoSettings.full(0))


def test_every_seed_uses_the_shipped_tiny_clip():
    """--seed varies the world and the runs, never the CLIP: every seed's settings name the shipped pack's recipe."""

    shipped = clip_pack_metadata(SHIPPED_PACK)["key"]
    for seed in (0, 1, 7):
        settings = DemoSettings.full(seed)
        assert settings.world.seed == seed
        assert settings.clip.key(settings.world) == shipped


def test_each_method_trains_its_own_schedule_and_the_demo_model_ignores_the_baselines():
    """The baseline runs `baseline_iters` (transductive half, from its own half-schedule checkpoint), OTSeg `iters`;
    the demo model (an OTSeg run) is keyed on OTSeg's recipe only, so the shipped pack survives a baseline change."""

    recipe = DemoRecipe(iters=100, baseline_iters=300)
    assert demo_train_config("otseg", "inductive", recipe).max_iters == 100
    assert demo_train_config("zegclip", "fully", recipe).max_iters == 300
    assert demo_train_config("zegclip", "transductive", recipe).max_iters == 150
    assert transductive_init_step(recipe, "zegclip") == 150 and transductive_init_step(recipe, "otseg") == 50
    with pytest.raises(KeyError):
        recipe.iters_for("otseg+")  # a method, not a trained architecture
    base = DemoSettings.full(0)
    longer_baseline = dataclasses.replace(base, recipe=dataclasses.replace(base.recipe, baseline_iters=9999))
    longer_otseg = dataclasses.replace(base, recipe=dataclasses.replace(base.recipe, iters=9999))
    assert demo_model_key(longer_baseline) == demo_model_key(base) != demo_model_key(longer_otseg)


def test_the_long_schedules_change_only_the_training_lengths(capsys):
    """--schedule long / longer lengthen both architectures' runs (x2, x4) and nothing else; the shipped demo model
    stays the fast schedule's; an unknown schedule is refused by the command line in one line."""

    assert SCHEDULES == ("fast", "long", "longer")
    fast = DemoRecipe.for_schedule("fast")
    assert fast == DemoRecipe() and fast.schedule_name() == "fast"
    assert DemoSettings.quick(0).recipe.schedule_name() is None
    for name, factor in (("long", 2), ("longer", 4)):
        recipe = DemoRecipe.for_schedule(name)
        for arch in ("zegclip", "otseg"):
            assert recipe.iters_for(arch) == factor * fast.iters_for(arch)
        assert dataclasses.replace(recipe, iters=fast.iters, baseline_iters=fast.baseline_iters) == fast
        assert DemoSettings.full(0, name).recipe == recipe and recipe.schedule_name() == name
        assert demo_model_key(DemoSettings.full(0, name)) != demo_model_key(DemoSettings.full(0))
    with pytest.raises(KeyError, match="valid: fast, long, longer"):
        DemoRecipe.for_schedule("converged")
    parser = argparse.ArgumentParser()
    demo_command.add_parser(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["demo", "--schedule", "long"]).schedule == "long"
    assert parser.parse_args(["demo", "--schedule", "longer"]).schedule == "longer"
    assert parser.parse_args(["demo"]).schedule == "fast"
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--schedule", "converged"])
    assert "invalid choice: 'converged'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "named"),
    [(["--seed", "-1"], "'-1'"), (["--seed", "one"], "'one'"), (["--seeds", "0,-2"], "'0,-2'"),
     (["--seeds", "0,x"], "'0,x'"), (["--seeds", "1,1"], "'1,1'")],
)  # fmt: skip
def test_bad_seeds_are_refused_in_one_line(argv: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="otseg")
    demo_command.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["demo", *argv])
    assert info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("otseg demo: error: argument --seed") and named in error


def test_build_demo_model_takes_a_changed_config_for_benches() -> None:
    """The ablation bench's hook: `model_config` replaces the method's own config, and only when it is given."""
    cfg = DemoSettings.full(0)
    state = read_clip_state_dict(tiny_clip_path(cfg.world, cfg.clip))
    own = demo_model_config("otseg", "inductive", cfg.world, cfg.clip)
    changed = dataclasses.replace(own, head=dataclasses.replace(own.head, attention="softmax"))
    assert build_demo_model(cfg, "otseg", "inductive", state).config.head.attention == "mpsa"
    model = build_demo_model(cfg, "otseg", "inductive", state, changed)
    assert model.config.head.attention == "softmax" and tuple(model.class_names) == CLASS_NAMES
    assert model.config.to_dict() == changed.to_dict()
