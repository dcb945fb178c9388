"""A very short end-to-end run of `otseg demo` (quick sizes: every stage runs, the numbers mean nothing)."""

from __future__ import annotations

import argparse
import json

from PIL import Image

from otseg.clip.loading import infer_clip_configs, read_clip_state_dict
from otseg.demo.run import add_demo_parser, cmd_demo
from otseg.demo.world import CLASS_NAMES

METHODS = {"zegclip", "otseg", "otseg+"}
SETTINGS = {"inductive", "transductive", "fully"}


def _demo(out, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    add_demo_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--out", str(out), "--quick", "--no-progress", "--seed", "1", *extra])
    assert args.func is cmd_demo
    return args.func(args)


def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    # Two worker processes, one thread each: the schedule the full demo uses on 2 cores.
    assert _demo(tmp_path / "demo", "--workers", "2", "--threads", "1") == 0

    out = tmp_path / "demo"
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 10
    assert {(r["method"], r["setting"]) for r in rows} == {(m, s) for m in METHODS for s in SETTINGS} | {
        ("control", "inductive")
    }
    for r in rows:
        assert set(r) == {"method", "setting", "miou_seen", "miou_unseen", "hiou"}
        for key in ("miou_seen", "miou_unseen", "hiou"):
            assert r[key] is None or 0.0 <= r[key] <= 100.0

    printed = capsys.readouterr().out
    assert "| method | setting | mIoU(S) | mIoU(U) | hIoU |" in printed
    assert "| control | inductive |" in printed and "seed 1" in printed

    info = json.loads((out / "demo_info.json").read_text())
    assert info["seed"] == 1 and set(info["timings_s"]) >= {"world", "tiny_clip", "total"}
    # The tiny CLIP is a plain OpenAI-format state dict that the regular loader reads and sizes on its own.
    sd = read_clip_state_dict(info["tiny_clip"])
    vision, text = infer_clip_configs(sd)
    assert vision.image_size == 64 and vision.patch_size == 8 and text.context_length == 77
    # Transductive training started from the inductive weights.
    config = json.loads((out / "runs" / "otseg-transductive" / "config.json").read_text())
    assert config["train"]["init_from"].endswith("otseg-inductive/iter_2.pt")

    panels = sorted((out / "panels").glob("*.png"))
    assert len(panels) == 3 * min(4, info["settings"]["world"]["num_val"])
    with Image.open(panels[0]) as im:
        assert im.width > 5 * 64 * 4  # image, ground truth and three or four predictions, then the legend
    assert len(info["classes"]) == len(CLASS_NAMES)
    assert info["workers"] == 2 and info["threads_per_worker"] == 1

    # The same runs one after another in this process give the same numbers: the schedule does not matter.
    assert _demo(tmp_path / "serial", "--workers", "1", "--threads", "1") == 0
    assert json.loads((tmp_path / "serial" / "results.json").read_text()) == rows


def test_demo_model_for_the_predictor(tmp_path, capsys):
    """The "demo" model: built on first use (here at quick sizes), then cached; a Predictor segments with it."""
    import numpy as np

    from otseg import Predictor
    from otseg.demo.pretrained import demo_model_dir
    from otseg.demo.run import DemoSettings

    settings = DemoSettings.quick(seed=2)
    path = demo_model_dir(settings=settings, cache=tmp_path, progress=False)
    assert "building the demo model" in capsys.readouterr().out
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert demo_model_dir(settings=settings, cache=tmp_path, progress=False) == path  # cached: no rebuild
    assert "building" not in capsys.readouterr().out

    predictor = Predictor.from_pretrained(path)
    assert predictor.default_class_names == list(CLASS_NAMES)
    assert predictor.model.config.head.ensemble_weight == 0.5  # OTSeg+
    image = np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    result = predictor.predict(image, ["red striped", "a brand new name"])
    assert result.labels.shape == (80, 100) and result.scores.shape == (2, 80, 100)
    # Names are matched to the training split: "red striped" is a seen class, the new name is not.
    assert result.seen_mask.tolist() == [True, False]
