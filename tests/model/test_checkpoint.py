"""Checkpoints: the reference's released `.pth` layout (full-size VOC key list and a tiny golden round trip) and
our own format (`model.safetensors` + `config.json`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import otseg
from conftest import golden_file, golden_segmentor_config, load_golden
from otseg import OTSeg
from otseg.clip.model import resize_positional_embedding
from otseg.clip.text import TextEncoder
from otseg.config import ModelConfig, Setting, TextConfig
from otseg.model.build import load_clip_into
from otseg.model_files.otseg_folder import load_pretrained, save_pretrained
from otseg.model_files.reference_pth import (
    ConversionReport,
    convert_reference_state_dict,
    load_reference_checkpoint,
    map_reference_key,
    read_reference_state_dict,
)
from otseg.model_files.reference_pth import _reference_key as reference_key_of

TOL = {"atol": 1e-5, "rtol": 1e-4}
EMPTY_WEIGHT = "decode_head.loss_decode.criterion.empty_weight"
# What the reference forward never touches (spec §7: "a converter can ignore ..."); keys are matched in full.
NEVER_USED = re.compile(r"decode_head\.decoder_1\.layers\.\d+\.(self_attn\.\S+|norm1\.(weight|bias))")


# ------------------------------------------------------------------------------------ the full-size key list


@dataclass(frozen=True)
class TsvRow:
    key: str
    shape: tuple[int, ...]
    dtype: str
    kind: str  # "param" or "buffer"
    trainable: bool
    numel: int
    note: str


@dataclass(frozen=True)
class KeyList:
    rows: list[TsvRow]
    header: dict[str, list[int]]  # '# label: n ...' comment line -> the integers after the colon

    def total(self, label: str) -> int:
        return self.header[label][0]


TSV_COLUMNS = ["key", "shape", "dtype", "kind", "trainable", "numel", "note"]


def read_key_list(path: Path) -> KeyList:
    rows: list[TsvRow] = []
    header: dict[str, list[int]] = {}
    columns_seen = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            m = re.match(r"#\s*(.+?):\s*(\d.*)$", line)
            if m:
                header[m.group(1)] = [int(n) for n in re.findall(r"\d+", m.group(2))]
            continue
        if not line.strip():
            continue
        fields = line.split("\t")
        if not columns_seen:  # the first non-comment line names the columns
            assert fields == TSV_COLUMNS
            columns_seen = True
            continue
        fields += [""] * (len(TSV_COLUMNS) - len(fields))  # the note column may be cut off when empty
        key, shape, dtype, kind, trainable, numel, note = fields
        rows.append(
            TsvRow(
                key=key,
                shape=tuple(int(s) for s in shape.split("x")) if shape else (),
                dtype=dtype,
                kind=kind,
                trainable=trainable == "1",
                numel=int(numel),
                note=note,
            )
        )
    return KeyList(rows, header)


KEYS = read_key_list(golden_file("official_state_dict_voc.tsv"))
TRAINABLE_LABEL = "trainable parameters (official freezing rule)"
NEVER_USED_LABEL = "decode_head parameters never used in forward (self_attn.*, norm1.*)"


def expected_drop(row: TsvRow) -> bool:
    return bool(NEVER_USED.fullmatch(row.key)) or row.key == EMPTY_WEIGHT or row.key.startswith("text_encoder.")


@pytest.fixture(scope="module")
def voc_model() -> OTSeg:
    return otseg.build_model("voc12-inductive")  # 97M parameters: built once for the module


def test_key_list_parses_and_matches_its_own_totals():
    # The header totals are the reference's own counts: checking the rows against them validates the parser.
    rows = KEYS.rows
    assert len(rows) == len({r.key for r in rows}) == 376  # spec §7: 375 parameters + 1 buffer
    params = [r for r in rows if r.kind == "param"]
    assert sum(r.numel for r in params) == KEYS.total("total parameters") == 164_077_824
    assert sum(r.numel for r in params if r.trainable) == KEYS.total(TRAINABLE_LABEL) == 13_821_184
    for prefix in ("backbone", "decode_head", "text_encoder"):
        n_params, n_trainable = KEYS.header[prefix][:2]
        block = [r for r in params if r.key.startswith(prefix + ".")]
        assert sum(r.numel for r in block) == n_params, prefix
        assert sum(r.numel for r in block if r.trainable) == n_trainable, prefix
    never_used = [r for r in rows if NEVER_USED.fullmatch(r.key)]
    assert all("never used" in r.note for r in never_used)
    assert sum(r.numel for r in never_used) == KEYS.total(NEVER_USED_LABEL) == 3_154_944
    buffers = [r for r in rows if r.kind == "buffer"]
    assert [r.key for r in buffers] == [EMPTY_WEIGHT]
    assert buffers[0].numel == KEYS.total("buffers in state_dict")
    assert all(r.numel == max(1, torch.Size(r.shape).numel()) for r in rows)


def test_every_reference_key_is_mapped_or_dropped_with_a_reason() -> None:
    dropped: set[str] = set()
    for row in KEYS.rows:
        ours, reason = map_reference_key(row.key, keep_text_encoder=False)
        if ours is None:
            assert reason.strip(), row.key
            dropped.add(row.key)
        else:
            assert reason == "", row.key
    assert dropped == {r.key for r in KEYS.rows if expected_drop(r)}
    # (4 self_attn + 2 norm1 tensors) x 3 layers, the loss buffer, and the text tower
    assert len(dropped) == 18 + 1 + sum(r.key.startswith("text_encoder.") for r in KEYS.rows)


def test_text_keys_are_kept_under_the_same_name_when_asked():
    for row in KEYS.rows:
        ours, reason = map_reference_key(row.key, keep_text_encoder=True)
        if row.key.startswith("text_encoder."):
            assert (ours, reason) == (row.key, "")
        else:  # the other rules do not depend on the flag
            assert (ours, reason) == map_reference_key(row.key, keep_text_encoder=False)


def test_ddp_prefix_is_stripped_and_unknown_keys_raise():
    assert map_reference_key("module.decode_head.q_proj.weight") == ("head.q_proj.weight", "")
    with pytest.raises(KeyError, match=re.escape("decode_head.foo.weight")):
        map_reference_key("decode_head.foo.weight")


def mapped_rows() -> Iterator[tuple[TsvRow, str]]:
    for row in KEYS.rows:
        ours, _ = map_reference_key(row.key)
        if ours is not None:
            yield row, ours


def test_mapped_keys_cover_the_model_with_the_reference_shapes(voc_model):
    ours = voc_model.state_dict()
    targets = [our_key for _, our_key in mapped_rows()]
    assert len(targets) == len(set(targets)), "two reference keys map onto one of ours"
    for row, our_key in mapped_rows():
        assert our_key in ours, f"{row.key} -> {our_key}: not a key of the model"
        assert tuple(ours[our_key].shape) == row.shape, row.key
        assert str(ours[our_key].dtype) == f"torch.{row.dtype}", row.key
    # every tensor of ours has a reference source: nothing would be left at its init when loading a release
    assert set(targets) == set(ours)


def test_error_messages_can_name_every_model_key_as_the_reference_does():
    for row, our_key in mapped_rows():
        assert reference_key_of(our_key) == row.key


def test_trainable_parameters_are_the_reference_ones_minus_the_dropped(voc_model):
    dropped_trainable = sum(r.numel for r in KEYS.rows if r.trainable and map_reference_key(r.key)[0] is None)
    assert dropped_trainable == KEYS.total(NEVER_USED_LABEL)  # only never-used head tensors are dropped
    expected = KEYS.total(TRAINABLE_LABEL) - dropped_trainable
    assert voc_model.num_parameters(trainable_only=True) == expected == 10_666_240
    # ... and parameter by parameter: the same names are trainable on both sides
    trainable = {n for n, p in voc_model.named_parameters() if p.requires_grad}
    assert trainable == {ours for row, ours in mapped_rows() if row.trainable}
    frozen_ref = sum(r.numel for r in KEYS.rows if r.kind == "param" and not expected_drop(r))
    assert voc_model.num_parameters() == frozen_ref == 97_494_784


def test_text_keys_fit_our_text_encoder():
    # The reference CLIPTextEncoder uses OpenAI's top-level names, as our TextEncoder does (no buffers).
    text_sd = TextEncoder(TextConfig()).state_dict()
    ref = {r.key.removeprefix("text_encoder."): r.shape for r in KEYS.rows if r.key.startswith("text_encoder.")}
    assert {k: tuple(v.shape) for k, v in text_sd.items()} == ref


def test_full_size_conversion_with_a_resized_positional_table(voc_model):
    # Stand-in tensors: expanded zeros cost no memory, so the whole 164M-value checkpoint can be converted.
    ref_sd = {r.key: torch.zeros(()).expand(r.shape) for r in KEYS.rows}
    # ViT-B/16 at 224 px: a 14x14 grid
    ref_sd["backbone.positional_embedding"] = torch.randn(197, 768, generator=torch.Generator().manual_seed(0))
    state, report = convert_reference_state_dict(ref_sd, voc_model, source="voc.pth")
    assert set(state) == set(voc_model.state_dict())
    assert set(report.dropped) == {r.key for r in KEYS.rows if expected_drop(r)}
    assert report.dropped_numel == sum(r.numel for r in KEYS.rows if expected_drop(r))
    assert report.resized == {"backbone.positional_embedding": ((197, 768), (1025, 768))}
    torch.testing.assert_close(
        state["backbone.positional_embedding"],
        resize_positional_embedding(ref_sd["backbone.positional_embedding"], 32),
        atol=0,
        rtol=0,
    )


# ------------------------------------------------------------------------- tiny golden model, reference .pth

SEG = load_golden("segmentor.pt")
BACKBONE = load_golden("backbone.pt")
TEXT = load_golden("text_encoder.pt")
# Stand-ins for the text tower a release carries (the golden segmentor omits it; the reference never runs it).
FAKE_TEXT = {
    "text_encoder.positional_embedding": torch.zeros(77, 16),
    "text_encoder.ln_final.weight": torch.ones(16),
}


def tiny_config(setting: Setting = "inductive") -> ModelConfig:
    return golden_segmentor_config(setting)


def reference_state_dict() -> dict[str, Tensor]:
    """What a released checkpoint of the golden segmentor holds: backbone + decode head + text tower."""
    backbone = {"backbone." + k: v for k, v in BACKBONE["state_dict"].items()}
    return {**backbone, **SEG["state_dict"], **FAKE_TEXT}


class Opaque:
    """A custom class: pickled by reference, so `weights_only` loading must refuse it."""

    def __init__(self, note: str) -> None:
        self.note = note


def write_reference_checkpoint(path: Path, state_dict: dict[str, Tensor], **meta: Any) -> Path:
    """An mmcv-style release file: `{'meta', 'state_dict', 'optimizer'}` as `torch.save` writes it."""
    ckpt = {
        "meta": {
            "CLASSES": tuple(SEG["config"]["inductive"]["class_names"]),
            "PALETTE": [[128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128]],
            "config": "model = dict(type='OTSeg', ...)\n",
            "mmseg_version": "0.24.0",
            "iter": 20000,
            **meta,
        },
        "state_dict": state_dict,
        "optimizer": {
            "state": {},
            "param_groups": [
                {"lr": 2e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False, "params": [0]}
            ],
        },
    }
    torch.save(ckpt, path)
    return path


def tiny_model() -> OTSeg:
    return OTSeg(tiny_config())


def loaded_tiny_model(tmp_path: Path) -> OTSeg:
    model = tiny_model()
    load_reference_checkpoint(model, write_reference_checkpoint(tmp_path / "ref.pth", reference_state_dict()))
    model.set_class_embeddings(SEG["text_embedding"])  # float16, as the reference .npy
    return model.eval()


def encode_decode(model: OTSeg) -> Tensor:
    with torch.no_grad():
        return model.eval().encode_decode(SEG["images"])


def test_reference_checkpoint_round_trip(tmp_path, capsys):
    path = write_reference_checkpoint(tmp_path / "ref.pth", reference_state_dict())
    model = tiny_model()
    report = load_reference_checkpoint(model, path, verbose=True)
    assert isinstance(report, ConversionReport)
    # 4 self_attn + 2 norm1 tensors in each of 3 layers, the loss buffer, and the (stand-in) text tower
    head_drops = {k for k in SEG["state_dict"] if NEVER_USED.fullmatch(k)} | {EMPTY_WEIGHT}
    assert len(head_drops) == 19
    assert set(report.dropped) == head_drops | set(FAKE_TEXT)
    assert all(reason.strip() for reason in report.dropped.values())
    assert report.dropped_numel == sum(reference_state_dict()[k].numel() for k in report.dropped)
    assert set(report.mapped.values()) == set(model.state_dict())
    assert report.resized == {}
    summary = capsys.readouterr().out
    assert f"dropped {len(report.dropped)}" in summary and "self-attention" in summary

    model.set_class_embeddings(SEG["text_embedding"])
    torch.testing.assert_close(encode_decode(model), SEG["outputs"]["encode_decode_inductive"], **TOL)


def test_reader_returns_state_dict_and_meta(tmp_path):
    path = write_reference_checkpoint(tmp_path / "ref.pth", reference_state_dict())
    state_dict, meta = read_reference_state_dict(path)
    assert set(state_dict) == set(reference_state_dict())
    assert meta["mmseg_version"] == "0.24.0" and meta["CLASSES"][0] == SEG["config"]["inductive"]["class_names"][0]


def test_positional_table_of_another_grid_is_resized(tmp_path):
    sd = reference_state_dict()
    pos = sd["backbone.positional_embedding"]  # (17, 64): grid 4
    sd["backbone.positional_embedding"] = resize_positional_embedding(pos, 3)  # (10, 64)
    model = tiny_model()
    report = load_reference_checkpoint(model, write_reference_checkpoint(tmp_path / "ref.pth", sd))
    assert report.resized == {"backbone.positional_embedding": ((10, 64), (17, 64))}
    assert "resized backbone.positional_embedding" in report.summary()
    expected = resize_positional_embedding(sd["backbone.positional_embedding"], 4)
    torch.testing.assert_close(model.backbone.positional_embedding.detach(), expected, atol=0, rtol=0)


def load_modified(tmp_path: Path, sd: dict[str, Tensor]) -> None:
    load_reference_checkpoint(tiny_model(), write_reference_checkpoint(tmp_path / "bad.pth", sd))


def test_missing_key_is_named(tmp_path):
    sd = reference_state_dict()
    del sd["decode_head.q_proj.weight"]
    with pytest.raises(ValueError, match=r"missing.*decode_head\.q_proj\.weight") as info:
        load_modified(tmp_path, sd)
    assert "bad.pth" in str(info.value)


def test_unexpected_key_is_named(tmp_path):
    sd = {**reference_state_dict(), "decode_head.foo.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"unexpected.*decode_head\.foo\.weight"):
        load_modified(tmp_path, sd)


def test_mapped_key_the_model_lacks_is_unexpected(tmp_path):
    # a 4th decoder layer is a valid reference name, but this model has 3 layers
    sd = {**reference_state_dict(), "decode_head.decoder_1.layers.3.linear1.bias": torch.zeros(128)}
    with pytest.raises(ValueError, match=r"unexpected.*decode_head\.decoder_1\.layers\.3\.linear1\.bias"):
        load_modified(tmp_path, sd)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    sd = reference_state_dict()
    sd["decode_head.q_proj.weight"] = torch.zeros(32, 48)  # the model's is (32, 64)
    with pytest.raises(ValueError, match=r"decode_head\.q_proj\.weight") as info:
        load_modified(tmp_path, sd)
    assert "(32, 48)" in str(info.value) and "(32, 64)" in str(info.value)


def test_nonexistent_file(tmp_path):
    path = tmp_path / "nowhere" / "release.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_reference_checkpoint(tiny_model(), path)


def test_garbage_file_is_named(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"<html>404 not found</html>\n" * 10)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_reference_checkpoint(tiny_model(), path)


def test_readable_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_reference_checkpoint(tiny_model(), path)


def test_non_tensor_state_dict_entry_is_named(tmp_path) -> None:
    sd: dict[str, Any] = {**reference_state_dict(), "decode_head.step": 3}
    with pytest.raises(ValueError, match=r"not tensors.*decode_head\.step"):
        load_modified(tmp_path, sd)


def test_positional_table_that_is_not_a_square_grid(tmp_path):
    sd = reference_state_dict()
    sd["backbone.positional_embedding"] = torch.zeros(12, 64)  # 1 + 11 rows: no square grid
    with pytest.raises(ValueError, match=r"backbone\.positional_embedding"):
        load_modified(tmp_path, sd)


def test_custom_pickled_objects_need_allow_pickle(tmp_path):
    # mmcv release files may carry arbitrary objects in `meta`; unpickling them can run code.
    path = write_reference_checkpoint(tmp_path / "pickled.pth", reference_state_dict(), hook=Opaque("x"))
    with pytest.raises(ValueError, match="allow_pickle") as info:
        load_reference_checkpoint(tiny_model(), path)
    assert str(path) in str(info.value)

    model = tiny_model()
    load_reference_checkpoint(model, path, allow_pickle=True)
    model.set_class_embeddings(SEG["text_embedding"])
    torch.testing.assert_close(encode_decode(model), SEG["outputs"]["encode_decode_inductive"], **TOL)


# ------------------------------------------------------------------------------------------------ our format


def assert_same_model(a: OTSeg, b: OTSeg) -> None:
    sd_a, sd_b = a.state_dict(), b.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for key, value in sd_a.items():
        assert value.dtype == sd_b[key].dtype and torch.equal(value, sd_b[key]), key
    assert torch.equal(a.class_embeddings, b.class_embeddings)
    assert a.class_embeddings.dtype == b.class_embeddings.dtype == torch.float32
    assert torch.equal(a.seen_mask, b.seen_mask)
    assert a.class_names == b.class_names
    assert a.has_class_embeddings == b.has_class_embeddings
    assert a.config.to_dict() == b.config.to_dict()
    # the same trainable / frozen split, text tower included
    assert [(n, p.requires_grad) for n, p in a.named_parameters()] == [
        (n, p.requires_grad) for n, p in b.named_parameters()
    ]


def test_save_and_load_pretrained(tmp_path):
    model = loaded_tiny_model(tmp_path)
    out = save_pretrained(model, tmp_path / "otseg-tiny")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_pretrained(out)
    assert_same_model(model, loaded)
    # the fp16 values of the reference .npy survive exactly; the seen classes are the non-contiguous [0, 2, 3]
    assert torch.equal(loaded.class_embeddings, SEG["text_embedding"].float())
    assert loaded.seen_mask.tolist() == [True, False, True, True, False]
    assert torch.equal(encode_decode(loaded), encode_decode(model))


def test_custom_classes_survive_the_round_trip(tmp_path):
    model = loaded_tiny_model(tmp_path)
    emb = SEG["text_embedding"][[4, 1, 0]]
    model.set_class_embeddings(emb, class_names=["lamp", "rug", "sofa"], seen=[1])
    loaded = load_pretrained(save_pretrained(model, tmp_path / "custom"))
    assert loaded.class_names == ["lamp", "rug", "sofa"]
    assert loaded.seen_mask.tolist() == [False, True, False]
    assert_same_model(model, loaded)
    assert torch.equal(encode_decode(loaded), encode_decode(model))


def test_model_without_class_embeddings_round_trips(tmp_path):
    model = tiny_model()
    loaded = load_pretrained(save_pretrained(model, tmp_path / "bare"))
    assert not loaded.has_class_embeddings
    assert_same_model(model, loaded)


def edit_config(directory: Path, edit: Callable[[dict], Any]) -> None:
    path = directory / "config.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    edit(meta)
    path.write_text(json.dumps(meta), encoding="utf-8")


@pytest.mark.parametrize(
    ("where", "key"),
    [(("config",), "colour_jitter"), (("config", "head"), "bogus_knob"), (("config", "vision"), "patchsize")],
)
def test_unknown_config_key_is_named(tmp_path, where, key):
    directory = save_pretrained(tiny_model(), tmp_path / "m")

    def add_key(meta: dict) -> None:
        section = meta
        for part in where:
            section = section[part]
        section[key] = 1

    edit_config(directory, add_key)
    with pytest.raises(ValueError, match=key):
        load_pretrained(directory)


def test_not_an_otseg_config(tmp_path):
    directory = save_pretrained(tiny_model(), tmp_path / "m")
    edit_config(directory, lambda meta: meta.update(format="diffusers"))
    with pytest.raises(ValueError, match="not an otseg config"):
        load_pretrained(directory)


def test_newer_format_and_corrupt_config_are_refused(tmp_path):
    directory = save_pretrained(tiny_model(), tmp_path / "m")
    edit_config(directory, lambda meta: meta.update(format_version=99))
    with pytest.raises(ValueError, match="format_version 99"):
        load_pretrained(directory)
    (directory / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(directory / "config.json"))):
        load_pretrained(directory)


def test_extra_entries_are_saved_but_cannot_clobber_the_config(tmp_path):
    directory = save_pretrained(tiny_model(), tmp_path / "m", extra={"source": "voc.pth"})
    assert json.loads((directory / "config.json").read_text(encoding="utf-8"))["source"] == "voc.pth"
    load_pretrained(directory)  # unknown top-level entries are the caller's own (`extra`), not an error
    with pytest.raises(ValueError, match="config"):
        save_pretrained(tiny_model(), tmp_path / "clash", extra={"config": {}})


def test_missing_directory_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pretrained(tmp_path / "nowhere")
    directory = save_pretrained(tiny_model(), tmp_path / "m")
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("model.safetensors")):
        load_pretrained(directory)


def text_tokens() -> Tensor:
    return TEXT["tokens"].reshape(-1, TEXT["tokens"].shape[-1])  # (classes x templates, 77)


def text_output(model: OTSeg) -> Tensor:
    assert model.text_encoder is not None
    with torch.no_grad():
        return model.text_encoder(text_tokens())


def test_round_trip_with_the_text_encoder_from_load_clip_into(tmp_path):
    model = loaded_tiny_model(tmp_path)
    load_clip_into(model, golden_file("openai_clip_jit.pt"))  # default heads: width // 64 (here 1)
    loaded = load_pretrained(save_pretrained(model, tmp_path / "with-text"))
    assert loaded.text_encoder is not None
    assert loaded.config.text == model.config.text
    assert_same_model(model, loaded)
    assert torch.equal(text_output(loaded), text_output(model))
    assert torch.equal(encode_decode(loaded), encode_decode(model))


def reference_text_model(tmp_path: Path) -> OTSeg:
    """The tiny model with the golden text tower: 4 heads at width 16, which OpenAI's width // 64 rule misses."""
    model = loaded_tiny_model(tmp_path)
    load_clip_into(model, golden_file("openai_clip_jit.pt"), text_heads=TEXT["config"]["transformer_heads"])
    return model


def test_load_clip_into_builds_the_reference_text_tower(tmp_path):
    model = reference_text_model(tmp_path)
    assert model.config.text.heads == 4
    torch.testing.assert_close(text_output(model).reshape(TEXT["output"].shape), TEXT["output"], **TOL)
    # the CLIP image weights it reloads are the ones the golden backbone was built from: outputs unchanged
    torch.testing.assert_close(encode_decode(model), SEG["outputs"]["encode_decode_inductive"], **TOL)


def test_text_head_count_survives_the_round_trip(tmp_path):
    model = reference_text_model(tmp_path)
    loaded = load_pretrained(save_pretrained(model, tmp_path / "with-text"))
    assert loaded.config.text.heads == 4
    assert_same_model(model, loaded)
    torch.testing.assert_close(text_output(loaded).reshape(TEXT["output"].shape), TEXT["output"], **TOL)
    assert torch.equal(encode_decode(loaded), encode_decode(model))


def test_load_pretrained_applies_inference_overrides(tmp_path):
    model = otseg.build_model(
        "voc12-inductive", vision__width=64, vision__layers=2, vision__heads=1, vision__image_size=32,
        vision__output_dim=32, vision__deep_prompt_layers=1, head__embed_dim=32, head__ffn_dim=64,
    )  # fmt: skip
    save_pretrained(model, tmp_path)
    loaded = load_pretrained(tmp_path, overrides={"stride": 256, "head.seen_bias": 0.0})
    assert loaded.config.stride == 256 and loaded.config.head.seen_bias == 0.0
    with pytest.raises(ValueError, match="no_such"):
        load_pretrained(tmp_path, overrides={"no_such": 1})
