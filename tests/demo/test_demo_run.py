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


def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_demo_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--out", str(tmp_path / "demo"), "--quick", "--no-progress", "--seed", "1"])
    assert args.func is cmd_demo
    assert args.func(args) == 0

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
