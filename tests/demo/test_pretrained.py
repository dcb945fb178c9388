"""The built-in demo model ships as an ordinary otseg model folder, written from the demo's shipped packs."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from otseg.demo.pretrained import same_model_folder, write_demo_model_folder
from otseg.demo.rebuild import main as rebuild
from otseg.demo.world import CLASS_NAMES, caption_vocabulary
from otseg.model_files.otseg_folder import load_pretrained
from otseg.named_models import NAMED_MODELS


def test_the_shipped_folder_is_what_the_packs_unpack_to(tmp_path, capsys):
    shipped = NAMED_MODELS["demo"].path
    written = write_demo_model_folder(tmp_path / "demo")
    assert json.loads((written / "config.json").read_text()) == json.loads((shipped / "config.json").read_text())
    ours, theirs = load_file(written / "model.safetensors"), load_file(shipped / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in ours)
    # The command says so, and says when a folder differs.
    assert rebuild(["model-folder", "--out", str(tmp_path / "again")]) == 0
    assert "identical to the shipped folder" in capsys.readouterr().out
    config = json.loads((written / "config.json").read_text())
    config["class_names"][0] = "another name"
    (written / "config.json").write_text(json.dumps(config))
    assert same_model_folder(written, shipped) == 1


def test_the_named_model_is_read_by_the_ordinary_loader():
    demo = NAMED_MODELS["demo"]
    assert demo.class_names == tuple(CLASS_NAMES)
    model = load_pretrained(demo.path)
    assert list(model.class_names) == list(CLASS_NAMES) and model.text_encoder is not None
    assert model.config.head.ensemble_weight == 0.5  # OTSeg+
    vocabulary = json.loads((demo.path / "config.json").read_text())["vocabulary"]
    assert set(vocabulary) == set(caption_vocabulary())
