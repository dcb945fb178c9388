"""Model folders (`otseg.model_files.otseg_folder`): bounded before anything is built, refused without their digest
unless trusted, and bound to their config.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from otseg.cli import main
from otseg.formats.state_dict import tensor_digest
from otseg.model_files import otseg_folder
from otseg.model_files.otseg_folder import MAX_CONFIG_BYTES, load_pretrained, save_pretrained
from tiny_training import tiny_model


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return save_pretrained(tiny_model(), tmp_path / "model")


def _rewrite_weights(folder: Path, edit_tensors=None, edit_header=None) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata())
    if edit_tensors:
        edit_tensors(tensors)
    if edit_header:
        edit_header(header, tensors)
    save_file(tensors, str(path), metadata=header)


def _edit_config(folder: Path, edit) -> None:
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))


def _one_line(err: BaseException, *needles: str) -> None:
    msg = str(err)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


def test_weights_without_their_digest_are_refused_unless_trusted(folder: Path, tmp_path: Path, capsys) -> None:
    _rewrite_weights(folder, edit_header=lambda header, _: header.pop("otseg_sha256"))
    with pytest.raises(ValueError) as info:
        load_pretrained(folder)
    _one_line(info.value, "model.safetensors", "carries no SHA-256", "--trust-unverified")
    assert load_pretrained(folder, trust_unverified=True).num_classes == 4
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    out = tmp_path / "out"
    code = main(["segment", str(image), "--checkpoint", str(folder), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--trust-unverified" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    argv = ["segment", str(image), "--checkpoint", str(folder), "--out", str(out), "--no-progress"]
    assert main([*argv, "--trust-unverified"]) == 0


def test_a_recomputed_digest_is_not_detected_and_the_docs_say_so(folder: Path) -> None:
    """The SHA-256 in the file protects against damage, not against a deliberate edit: whoever changes the weights
    can write the new digest beside them. This is the documented limit (module docstring, docs/safety.md)."""

    def edit(tensors: dict) -> None:
        tensors["head.q_proj.bias"] = tensors["head.q_proj.bias"] + 1

    _rewrite_weights(folder, edit, lambda header, tensors: header.update(otseg_sha256=tensor_digest(tensors)))
    assert torch.equal(load_pretrained(folder).head.q_proj.bias, tiny_model().head.q_proj.bias + 1)
    assert "not a signature" in (otseg_folder.__doc__ or "")
    assert "not a signature" in (Path(__file__).parents[2] / "docs" / "safety.md").read_text()


@pytest.mark.parametrize(
    "edit",
    [
        lambda meta: meta["class_names"].reverse(),  # "red" now names what the model learnt as "yellow"
        lambda meta: meta["config"]["head"].update(seen_bias=0.0),
        lambda meta: meta["config"].update(stride=16),
    ],
)
def test_an_edited_config_json_is_refused(folder: Path, edit) -> None:
    _edit_config(folder, edit)
    with pytest.raises(ValueError) as info:
        load_pretrained(folder)
    _one_line(info.value, "config.json is not the config model.safetensors was saved with", "--set")


def test_a_config_declaring_a_huge_model_is_refused_before_anything_is_built(folder: Path, monkeypatch) -> None:
    built: list[str] = []
    real = otseg_folder.OTSeg

    def recording(config):
        model = real(config)
        built.append(str(next(model.parameters()).device))
        return model

    monkeypatch.setattr(otseg_folder, "OTSeg", recording)
    _edit_config(folder, lambda meta: meta["config"]["vision"].update(layers=1_000_000))
    with pytest.raises(ValueError) as info:
        load_pretrained(folder)
    _one_line(info.value, "config.json", "vision.layers = 1000000", "at most 128")
    assert built == []
    # Within every bound, but not what model.safetensors holds: only the meta-device model (shapes) is built.
    _edit_config(folder, lambda meta: meta["config"]["vision"].update(layers=100))
    with pytest.raises(ValueError) as info:
        load_pretrained(folder)
    _one_line(info.value, "model.safetensors", "missing key(s)")
    assert built == ["meta"]


def test_config_json_too_large_or_too_deep_is_one_line(folder: Path) -> None:
    path = folder / "config.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError) as info:
        load_pretrained(folder)
    _one_line(info.value, str(path), "nested too deep")
    with path.open("wb") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(ValueError) as info:
        load_pretrained(folder)
    _one_line(info.value, str(path), f"{MAX_CONFIG_BYTES + 1:,} bytes")


def test_class_embeddings_declared_too_many_are_refused_from_the_header(folder: Path) -> None:
    def edit(tensors: dict) -> None:
        tensors["class_embeddings"] = torch.zeros(5000, 1, 16)
        tensors["seen_mask"] = torch.ones(5000, dtype=torch.uint8)

    _rewrite_weights(folder, edit, lambda header, tensors: header.update(otseg_sha256=tensor_digest(tensors)))
    with pytest.raises(ValueError) as info:
        load_pretrained(folder)
    _one_line(info.value, "model.safetensors", "(5000, 1, 16)", "at most 4096")


def test_an_integer_of_5000_digits_in_config_json_is_one_line(folder: Path) -> None:
    """Python refuses to parse integers over 4,300 digits with a ValueError that is not a JSONDecodeError."""
    path = folder / "config.json"
    path.write_text(path.read_text().replace('"crop_size": ', '"crop_size": ' + "9" * 5000 + ', "x": ', 1))
    with pytest.raises(ValueError) as info:
        load_pretrained(folder)
    _one_line(info.value, str(path), "is not valid JSON", "4300 digits")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{", "is not valid JSON"),
        ('{"format": "otseg", "class_names": 5}', "class_names = 5: expected a list of names"),
        ('{"format": "otseg", "config": {"class_names": ["a", null]}}', "position 1 holds the NoneType"),
        (json.dumps({"format": "otseg", "class_names": ["a" * 10] * 2_000_000}), "more than any otseg config.json"),
    ],
)
def test_otseg_classes_reads_a_folder_config_with_the_same_bounds(folder: Path, capsys, text: str, needle: str) -> None:
    (folder / "config.json").write_text(text)
    assert main(["classes", "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "config.json" in err and needle in err, err


def test_integer_class_embeddings_are_refused_in_one_line(folder: Path) -> None:
    """A folder whose class embeddings were rewritten as integers (with a matching digest) does not load: they would
    be cast silently and score as nonsense."""

    def edit(tensors: dict) -> None:
        tensors["class_embeddings"] = (tensors["class_embeddings"] * 100).round().to(torch.int64)

    _rewrite_weights(folder, edit, lambda header, tensors: header.update(otseg_sha256=tensor_digest(tensors)))
    with pytest.raises(ValueError) as info:
        load_pretrained(folder)
    _one_line(info.value, "model.safetensors", "floating point", "int64")
