"""The command-line interface, run in-process as a user would call it."""

from __future__ import annotations

import importlib.metadata
import json

import numpy as np
import pytest
import torch
from PIL import Image

import otseg
from conftest import golden_file, load_golden, tiny_set_args
from otseg.cli import build_parser, main
from otseg.cli import demo as demo_command


def test_presets_lists_and_describes(capsys):
    assert main(["presets"]) == 0
    names = capsys.readouterr().out.split()
    assert "voc12-inductive" in names and "coco-transductive" in names and len(names) >= 9
    assert main(["presets", "context59-inductive"]) == 0
    assert "480" in capsys.readouterr().out


def test_params_agrees_with_the_reference_key_table(capsys):
    tsv = golden_file("official_state_dict_voc.tsv")
    assert main(["params", "--preset", "voc12-inductive", "--reference-keys", str(tsv)]) == 0
    out = capsys.readouterr().out
    assert "10,666,240" in out and "13,821,184" in out
    assert "every reference key is mapped or dropped by name; trainable counts agree" in out


def test_bad_input_is_one_line_and_exit_2(capsys):
    assert main(["params", "--preset", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'no-such-preset'" in err and "voc12-inductive" in err and "Traceback" not in err
    assert main(["params", "--set", "head.no_such_key=1"]) == 2
    assert "head.no_such_key" in capsys.readouterr().err
    assert main(["params", "--set", "head.use_mps=maybe"]) == 2
    assert "maybe" in capsys.readouterr().err
    assert main(["convert", "/no/such.pth", "--preset", "voc12-inductive", "--out", "x"]) == 2
    assert "/no/such.pth" in capsys.readouterr().err


def test_demo_is_the_miniature_benchmark(capsys):
    # The end-to-end run itself is tests/demo/test_demo_run.py; here: `otseg demo` is wired to it.

    args = build_parser().parse_args(["demo", "--out", "x", "--quick", "--seed", "3"])
    assert args.run is demo_command.run and args.quick and args.seed == 3 and args.out == "x"


def test_convert_reference_checkpoint_to_our_format(tmp_path, capsys):

    seg, backbone = load_golden("segmentor.pt"), load_golden("backbone.pt")
    ref_sd = {**{"backbone." + k: v for k, v in backbone["state_dict"].items()}, **seg["state_dict"]}
    ckpt = tmp_path / "ref.pth"
    torch.save({"meta": {"CLASSES": ("a", "b"), "config": "..."}, "state_dict": ref_sd, "optimizer": {}}, ckpt)
    emb = tmp_path / "emb.npy"
    np.save(emb, seg["text_embedding"].numpy())
    out_dir = tmp_path / "converted"
    args = ["convert", str(ckpt), "--preset", "voc12-inductive", "--out", str(out_dir), "--embeddings", str(emb)]
    assert main([*args, *tiny_set_args()]) == 0
    out = capsys.readouterr().out
    assert "dropped 19" in out and "never called" in out
    config = json.loads((out_dir / "config.json").read_text())
    assert config["format"] == "otseg" and config["config"]["vision"]["width"] == 64
    model = otseg.load_pretrained(out_dir)
    assert torch.equal(model.head.q_proj.weight, seg["state_dict"]["decode_head.q_proj.weight"])
    assert torch.equal(model.class_embeddings, seg["text_embedding"].float())


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["convert", "--help"], ["params", "--help"]])
def test_help_exits_cleanly(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: otseg" in capsys.readouterr().out


def test_score_writes_the_public_keys(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    for i in range(3):
        gt = rng.integers(0, 20, (24, 32)).astype(np.uint8)
        gt[:2] = 255
        pred = np.where(rng.random((24, 32)) < 0.7, gt, rng.integers(0, 20, (24, 32))).astype(np.uint8)
        pred[pred == 255] = 0
        Image.fromarray(gt).save(tmp_path / "gt" / f"img{i}.png")
        Image.fromarray(pred).save(tmp_path / "pred" / f"img{i}.png")
    out = tmp_path / "res.json"
    argv = ["score", "--preset", "voc12-inductive", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    assert main([*argv, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {"miou_seen", "miou_unseen", "hiou", "per_class_iou"} <= set(res)
    s, u = res["miou_seen"], res["miou_unseen"]
    assert res["hiou"] == pytest.approx(2 * s * u / (s + u))
    assert len(res["per_class_iou"]) == 20 and (tmp_path / "res.md").is_file()
    (tmp_path / "pred" / "img0.png").unlink()
    assert main([*argv, "--out", str(out)]) == 2
    assert "img0" in capsys.readouterr().err


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`otseg --version` prints the version the package metadata carries (pyproject reads it from otseg.version)."""
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    printed = capsys.readouterr().out.strip()
    assert printed == f"otseg {importlib.metadata.version('otseg')}" == f"otseg {otseg.__version__}"
