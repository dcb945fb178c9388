"""A CLIP file's block count is only key names: a small file naming block 120 must not build 121 blocks
(`otseg.clip.loading.load_openai_clip`, `otseg.model.build`'s text tower): the file is checked against a
shapes-only (meta-device) model first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import otseg.clip.loading as loading
from conftest import golden_file


def _clip_with_a_far_block(tmp_path: Path, prefix: str) -> Path:
    sd = dict(torch.load(golden_file("openai_clip.pt"), weights_only=True)["state_dict"])
    sd[f"{prefix}transformer.resblocks.120.ln_1.weight"] = torch.ones(1)  # 4 bytes that ask for 121 blocks
    path = tmp_path / "ViT-B-16.pt"
    torch.save(sd, path)
    return path


@pytest.mark.parametrize("prefix", ["visual.", ""])  # the image tower, the text tower
def test_a_far_block_index_is_refused_before_the_model_is_built(tmp_path: Path, monkeypatch, prefix: str) -> None:
    path = _clip_with_a_far_block(tmp_path, prefix)
    built: list[str] = []
    real = loading.CLIP

    def recording(vision, text):
        model = real(vision, text)
        built.append(str(next(model.parameters()).device))
        return model

    monkeypatch.setattr(loading, "CLIP", recording)
    with pytest.raises(ValueError) as info:
        loading.load_openai_clip(path)
    msg = str(info.value)
    assert str(path) in msg and "missing key(s)" in msg and "resblocks" in msg and "\n" not in msg
    assert built == ["meta"]  # only the shapes-only model
