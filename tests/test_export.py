"""ONNX export (`otseg.export`): the exported graph against PyTorch on the golden tiny segmentor, its metadata,
sliding-window inference with onnxruntime, the `otseg export` command and its errors."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import golden_file, golden_segmentor_config, load_golden
from otseg import OTSeg, Predictor
from otseg.cli import export as export_command
from otseg.cli.model_options import predictor_from_args
from otseg.config import ModelConfig
from otseg.export import (
    compare_with_onnxruntime,
    export_onnx,
    exported_options,
    normalise_image,
    onnx_metadata,
    onnx_segment_image,
    onnx_slide_inference,
)
from otseg.model.build import load_clip_into
from otseg.model_files.otseg_folder import save_pretrained
from otseg.model_files.reference_pth import convert_reference_state_dict

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

SEG = load_golden("segmentor.pt")
BACKBONE = load_golden("backbone.pt")
# The golden reference runs stop after 17-18 Sinkhorn iterations; 20 fixed ones keep the export quick.
ITERS = 20


def golden_model() -> OTSeg:
    """The golden tiny segmentor (64x64 crops, 5 classes, 3 prompts), with the reference's weights and text."""
    model = OTSeg(golden_segmentor_config())
    sd = {**{"backbone." + k: v for k, v in BACKBONE["state_dict"].items()}, **SEG["state_dict"]}
    state, _ = convert_reference_state_dict(sd, model)
    model.load_state_dict(state, strict=True)
    model.set_class_embeddings(SEG["text_embedding"])
    return model.eval()


def fixed_iteration_scores(model: OTSeg, images: torch.Tensor, iters: int = ITERS) -> np.ndarray:
    """What the graph computes: `encode_decode` with the exported Sinkhorn mode."""
    with torch.no_grad():
        return model.encode_decode(images, options=exported_options(iters)).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[OTSeg, Path, object]:
    model = golden_model()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "sub" / "golden.onnx", sinkhorn_iters=ITERS)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return model, path, session


# ------------------------------------------------------------------------------------------------ the graph
def test_onnx_matches_pytorch_with_the_same_sinkhorn(exported) -> None:
    model, _, session = exported
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("image", "scores")
    assert not isinstance(inp.shape[0], int) and inp.shape[1:] == [3, 64, 64]  # dynamic batch, fixed crop
    images = SEG["images"]
    for batch in (images, torch.cat([images, images[:1].flip(-1)]), images[1:]):  # B = 2, 3, 1
        onnx_scores = session.run(None, {"image": batch.numpy()})[0]
        torch_scores = fixed_iteration_scores(model, batch)
        assert onnx_scores.shape == (len(batch), 5, 64, 64)
        diff = float(np.abs(onnx_scores - torch_scores).max())
        print(f"B={len(batch)}: onnxruntime vs PyTorch ({ITERS} fixed Sinkhorn iterations): max |diff| {diff:.2e}")
        assert diff < 1e-4
        assert np.array_equal(onnx_scores.argmax(1), torch_scores.argmax(1))


def test_fixed_iterations_stay_close_to_the_reference_stopping_rule(exported) -> None:
    model, _, session = exported
    images = SEG["images"]
    onnx_scores = session.run(None, {"image": images.numpy()})[0]
    with torch.no_grad():  # default Sinkhorn, image by image (the reference evaluates with batch size 1)
        default = torch.cat([model.encode_decode(images[i : i + 1]) for i in range(len(images))]).numpy()
    reference = SEG["outputs"]["encode_decode_inductive"].numpy()  # the official code's own scores
    vs_default = float(np.abs(onnx_scores - default).max())
    vs_reference = float(np.abs(onnx_scores - reference).max())
    agree = float((onnx_scores.argmax(1) == default.argmax(1)).mean())
    print(
        f"exported ({ITERS} fixed iterations) vs PyTorch default stopping rule: max |diff| {vs_default:.2e}, "
        f"argmax agreement {100 * agree:.3f}%; vs the reference's scores: max |diff| {vs_reference:.2e}"
    )
    assert vs_default < 1e-4 and vs_reference < 1e-4
    assert agree > 0.999


def test_graph_unrolls_exactly_the_requested_sinkhorn_iterations(exported) -> None:
    model, path, _ = exported
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    calls = model.config.head.num_layers + int(model.config.head.use_mps)  # decoder layers + the MPS path
    # The log-domain update takes two log-sum-exps per iteration; no Loop/If: nothing is decided at run time.
    assert ops.count("ReduceLogSumExp") == 2 * ITERS * calls
    assert not {"Loop", "If", "Scan"} & set(ops)


# ------------------------------------------------------------------------------------------------ metadata
def test_metadata_lets_the_file_run_alone(exported) -> None:
    model, path, session = exported
    meta = onnx_metadata(session)
    cfg = model.config
    assert meta["class_names"] == list(cfg.class_names)
    assert meta["seen_classes"] == list(cfg.seen_classes) and meta["seen_bias_applied"]
    assert meta["mean"] == list(cfg.mean) and meta["std"] == list(cfg.std)
    assert (meta["input_size"], meta["crop_size"], meta["stride"]) == ([64, 64], 64, 48)
    assert meta["sinkhorn_iters"] == ITERS and ModelConfig.from_dict(meta["config"]) == cfg
    assert onnx_metadata(path) == meta
    sidecar = path.with_name(path.name + ".json")
    assert json.loads(sidecar.read_text(encoding="utf-8")) == meta
    assert all(k.startswith("otseg.") for k in session.get_modelmeta().custom_metadata_map)
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left nothing behind


def test_normalise_image_uses_the_stored_statistics(exported) -> None:
    model, _, session = exported
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    x = normalise_image(rgb, session)
    mean = torch.tensor(model.config.mean).view(3, 1, 1)
    std = torch.tensor(model.config.std).view(3, 1, 1)
    expected = ((torch.from_numpy(rgb).permute(2, 0, 1).float() - mean) / std)[None]
    assert x.shape == (1, 3, 7, 5) and x.dtype == np.float32
    np.testing.assert_allclose(x, expected.numpy(), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------ slide inference
def test_onnx_slide_inference_matches_pytorch(exported) -> None:
    model, _, session = exported
    images = SEG["images_slide"]  # (1, 3, 80, 112): 4 overlapping 64x64 windows at stride 48
    scores = onnx_slide_inference(session, images.numpy())
    with torch.no_grad():
        torch_scores = model.slide_inference(images, options=exported_options(ITERS)).numpy()
    assert scores.shape == (1, 5, 80, 112)
    assert float(np.abs(scores - torch_scores).max()) < 1e-4
    assert np.array_equal(scores.argmax(1), torch_scores.argmax(1))
    # A (3, H, W) image and a batch of two give each image its own result.
    np.testing.assert_allclose(onnx_slide_inference(session, images[0].numpy()), scores, atol=0, rtol=0)
    pair = onnx_slide_inference(session, torch.cat([images, images.flip(-1)]).numpy())
    np.testing.assert_allclose(pair[:1], scores, atol=1e-6, rtol=0)
    assert not np.allclose(pair[1:], scores, atol=1e-3)


def test_onnx_segment_image_from_a_file_matches_the_predictor(exported, tmp_path: Path) -> None:

    model, _, session = exported
    rng = np.random.default_rng(0)
    rgb = np.zeros((50, 90, 3), np.uint8)
    rgb[:25], rgb[25:] = (200, 40, 40), (30, 60, 210)
    rgb = np.clip(rgb + rng.integers(0, 20, rgb.shape), 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    got = onnx_segment_image(session, tmp_path / "photo.png")
    expected = Predictor(model, options=exported_options(ITERS)).predict(rgb)
    assert got.labels.shape == (50, 90) and got.class_names == expected.class_names
    assert float((got.labels == expected.labels).mean()) > 0.99
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4, rtol=0)


def test_onnx_slide_inference_rejects_images_smaller_than_the_crop(exported) -> None:
    _, _, session = exported
    with pytest.raises(ValueError, match=r"smaller than the crop 64"):
        onnx_slide_inference(session, np.zeros((1, 3, 40, 100), np.float32))
    with pytest.raises(ValueError, match=r"crop 32 differs"):
        onnx_slide_inference(session, np.zeros((1, 3, 80, 100), np.float32), crop=32)


# ------------------------------------------------------------------------------------------------ API errors
def test_export_errors_are_clear(tmp_path: Path) -> None:
    model = golden_model()
    with pytest.raises(ValueError, match=r"60x60 is not a positive multiple of the patch size 16"):
        export_onnx(model, tmp_path / "m.onnx", image_size=60)
    with pytest.raises(ValueError, match=r"sinkhorn_iters must be >= 1"):
        export_onnx(model, tmp_path / "m.onnx", sinkhorn_iters=0)
    with pytest.raises(ValueError, match=r"no CLIP text tower"):
        export_onnx(model, tmp_path / "m.onnx", class_names=["cat", "dog"])
    with pytest.raises(ValueError, match=r"is a folder"):
        export_onnx(model, tmp_path)
    with pytest.raises(ValueError, match=r"no class text embeddings"):
        export_onnx(OTSeg(golden_segmentor_config()), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_missing_onnxruntime_says_how_to_install(exported, monkeypatch: pytest.MonkeyPatch) -> None:
    model, path, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(RuntimeError, match=re.escape("pip install 'otseg[onnx]'")):
        compare_with_onnxruntime(model, path)


# ------------------------------------------------------------------------------------------------ CLI
def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="otseg")
    export_command.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["export", *argv])


def test_cli_export_with_new_classes_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:

    model = golden_model()
    load_clip_into(model, golden_file("openai_clip_jit.pt"), text_heads=4)  # the tiny CLIP's text tower
    ckpt = save_pretrained(model, tmp_path / "ckpt")
    out = tmp_path / "out" / "model.onnx"
    args = parse(["--onnx", str(out), "--checkpoint", str(ckpt), "--classes", "bird, bottle ,wall", "--sinkhorn-iters",
                  "2", "--check"])  # fmt: skip
    assert args.run is export_command.run
    assert export_command.run(args) == 0
    printed = capsys.readouterr().out
    print(printed)
    assert "classes: bird, bottle, wall" in printed
    for stage in ("loading the model ... ", "exporting to ONNX", "checking with onnxruntime ... "):
        assert re.search(re.escape(stage) + r".*?\d+\.\d s", printed), stage  # each stage says how long it took
    found = re.search(r"max \|diff\| (\S+) with the same 2-iteration Sinkhorn", printed)
    assert found is not None
    diff = float(found.group(1))
    assert diff < 1e-4
    meta = onnx_metadata(out)
    assert meta["class_names"] == ["bird", "bottle", "wall"] and meta["sinkhorn_iters"] == 2
    assert meta["seen_classes"] == [0]  # bird: a seen training class; bottle: held out (unseen); wall: unknown
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = SEG["images"]
    onnx_scores = session.run(None, {"image": images.numpy()})[0]
    model.set_classes(["bird", "bottle", "wall"])
    assert onnx_scores.shape == (2, 3, 64, 64)
    assert float(np.abs(onnx_scores - fixed_iteration_scores(model, images, iters=2)).max()) < 1e-4


def test_cli_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = export_command.run
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        run(parse(["--onnx", str(tmp_path / "m.onnx"), "--checkpoint", str(missing)]))
    ckpt = save_pretrained(golden_model(), tmp_path / "ckpt")  # no text tower
    with pytest.raises(ValueError, match=r"--classes needs the model's CLIP text tower.*--clip"):
        export_command.run(
            parse(["--onnx", str(tmp_path / "m.onnx"), "--checkpoint", str(ckpt), "--classes", "cat,dog"])
        )
    with pytest.raises(ValueError, match=r"--sinkhorn-iters must be >= 1"):
        export_command.run(
            parse(["--onnx", str(tmp_path / "m.onnx"), "--checkpoint", str(ckpt), "--sinkhorn-iters", "0"])
        )
    with pytest.raises(ValueError, match=r"--image-size expects N or HxW"):
        export_command.run(
            parse(["--onnx", str(tmp_path / "m.onnx"), "--checkpoint", str(ckpt), "--image-size", "big"])
        )
    with pytest.raises(ValueError, match=r"is a folder"):
        run(parse(["--onnx", str(tmp_path), "--checkpoint", str(ckpt)]))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RuntimeError, match=re.escape("pip install 'otseg[onnx]'")):
        run(parse(["--onnx", str(tmp_path / "m.onnx"), "--checkpoint", str(ckpt), "--check"]))
    assert not (tmp_path / "m.onnx").exists()
    assert parse(["--onnx", str(tmp_path / "m.onnx")]).model == "demo"  # as segment and serve: the demo model


def test_cli_model_demo_uses_the_predictor(monkeypatch: pytest.MonkeyPatch) -> None:

    model = golden_model()
    seen: list[str] = []

    def fake_from_pretrained(name, **kwargs):  # the real demo model is trained on first use (minutes)
        seen.append(str(name))
        return Predictor(model)

    monkeypatch.setattr(Predictor, "from_pretrained", staticmethod(fake_from_pretrained))
    assert predictor_from_args(parse(["--onnx", "m.onnx", "--model", "demo"])).model is model
    assert seen == ["demo"]
