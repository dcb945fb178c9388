"""Class text embeddings: the live recipe against the reference text encoder (golden README §4), the on-disk
cache, the reference `.npy` files (reference-embeddings/README.md, spec §1.2) and the model's class API."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import REFERENCE_EMBEDDINGS, golden_file, load_golden
from otseg import OTSeg, get_preset, list_presets
from otseg.clip.text import TextEncoder
from otseg.clip.tokenizer import tokenize
from otseg.config import (
    TEMPLATE_SETS,
    TEMPLATES_6,
    TEMPLATES_8,
    HeadConfig,
    ModelConfig,
    TextConfig,
    VisionConfig,
    resolve_templates,
)
from otseg.formats.class_embeddings import load_class_embeddings
from otseg.model.build import attach_clip_text_tower, load_clip_into
from otseg.model.text import cache_dir, compute_class_embeddings, validate_class_names

TEXT = load_golden("text_encoder.pt")  # skips the whole module when the golden files are absent


class _Tolerance(TypedDict):
    """The tolerance keywords of `torch.testing.assert_close`."""

    atol: float
    rtol: float


TOL: _Tolerance = {"atol": 1e-5, "rtol": 1e-4}
VOC = get_preset("voc12-inductive")


# ------------------------------------------------------------------------------------------------ helpers


def text_config() -> TextConfig:
    c = TEXT["config"]
    return TextConfig(
        context_length=c["context_length"],
        vocab_size=c["vocab_size"],
        width=c["transformer_width"],
        heads=c["transformer_heads"],
        layers=c["transformer_layers"],
        output_dim=c["embed_dim"],
    )


@functools.cache
def _clip_state_dict() -> dict[str, torch.Tensor]:
    return load_golden("openai_clip.pt")["state_dict"]


def make_encoder() -> TextEncoder:
    """A fresh tiny text tower with the reference weights (fresh, so tests may mutate it)."""
    state = dict(TEXT["state_dict"])
    # Omitted from the fixture to save space; bit-identical to the tiny CLIP's (golden README §4).
    state["token_embedding.weight"] = _clip_state_dict()["token_embedding.weight"]
    encoder = TextEncoder(text_config())
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def count_forwards(module: torch.nn.Module) -> list[int]:
    """A list that grows by one per forward call: proves whether the encoder ran at all."""
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def cache_files() -> list[Path]:
    root = cache_dir()
    return sorted(root.glob("*.pt")) if root.is_dir() else []


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own: the autouse fixture's cache is shared by the whole session."""
    monkeypatch.setenv("OTSEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "text_embeddings"


@pytest.fixture
def encoder() -> TextEncoder:
    return make_encoder()


# --------------------------------------------------------------------------------- 1. the reference recipe


def test_fixture_templates_are_ours() -> None:
    # Prompt n of a class is row n of its block, so the template order is part of the numbers.
    assert tuple(TEXT["templates"]) == TEMPLATES_6
    assert TEMPLATES_8[:6] == TEMPLATES_6
    assert TEMPLATES_8[6:] == ("a photo of large {}.", "a background of a {}.")
    assert resolve_templates("templates_8") == TEMPLATE_SETS["templates_8"] == TEMPLATES_8


def test_tokens_match_tokenizer() -> None:
    classes, templates, tokens = TEXT["classes"], TEXT["templates"], TEXT["tokens"]
    assert tokens.shape == (3, 6, 77)
    for c, name in enumerate(classes):
        for t, template in enumerate(templates):
            torch.testing.assert_close(tokenize(template.format(name))[0], tokens[c, t], rtol=0, atol=0)
    # The batched call that compute_class_embeddings makes (class-major, template-minor) gives the same layout.
    batch = tokenize([t.format(n) for n in classes for t in templates])
    assert batch.dtype == torch.int64
    assert torch.equal(batch.reshape(tokens.shape), tokens)


def test_live_embeddings_match_reference(encoder: TextEncoder, fresh_cache: Path) -> None:
    emb = compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"])
    assert emb.shape == (3, 6, 32)
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb, TEXT["output_normalized"], **TOL)
    # A template-set name is the same as the list it names.
    by_name = compute_class_embeddings(encoder, TEXT["classes"], "templates_6", use_cache=False)
    torch.testing.assert_close(by_name, emb, rtol=0, atol=0)


def test_small_batches_give_the_same_embeddings(encoder: TextEncoder) -> None:
    # 18 texts in batches of 4: the last batch is partial, and the class/template layout must survive it.
    emb = compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"], use_cache=False, batch_size=4)
    torch.testing.assert_close(emb, TEXT["output_normalized"], **TOL)


# ---------------------------------------------------------------------------------------------- 2. cache


def test_cache_hit_skips_the_encoder(encoder: TextEncoder, fresh_cache: Path) -> None:
    calls = count_forwards(encoder)
    first = compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"])
    assert calls, "the first call must run the encoder (else the counter proves nothing)"
    assert len(cache_files()) == 1
    assert cache_files()[0].parent == fresh_cache
    n = len(calls)
    second = compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"])
    assert len(calls) == n
    assert torch.equal(second, first)
    # The key is the weights' content, not the module object: a rebuilt tower (a new process) hits too.
    other = make_encoder()
    other_calls = count_forwards(other)
    assert torch.equal(compute_class_embeddings(other, TEXT["classes"], TEXT["templates"]), first)
    assert not other_calls


def _bump_bias_in_place(encoder: TextEncoder) -> None:
    with torch.no_grad():
        encoder.ln_final.bias.add_(0.25)


def _reload_changed_weights(encoder: TextEncoder) -> None:
    state = encoder.state_dict()
    state["text_projection"] = state["text_projection"] * 1.5 + 0.01
    encoder.load_state_dict(state)


def _replace_parameter_data(encoder: TextEncoder) -> None:
    with torch.no_grad():
        encoder.ln_final.weight.data = encoder.ln_final.weight.data.flip(0).clone()


@pytest.mark.parametrize(
    "change",
    [_bump_bias_in_place, _reload_changed_weights, _replace_parameter_data],
    ids=["in-place", "load_state_dict", "data-reassigned"],
)
def test_cache_misses_when_the_weights_change(
    encoder: TextEncoder, fresh_cache: Path, change: Callable[[TextEncoder], None]
) -> None:
    # The same module object, mutated after its first use: a memoised fingerprint must not outlive this.
    calls = count_forwards(encoder)
    before = compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"])
    n = len(calls)
    change(encoder)
    after = compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"])
    assert len(calls) > n
    assert not torch.allclose(after, before)
    torch.testing.assert_close(
        after, compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"], use_cache=False), rtol=0, atol=0
    )
    assert len(cache_files()) == 2


@pytest.mark.parametrize(
    ("classes", "templates"),
    [
        (TEXT["classes"], TEXT["templates"][:5]),  # one template fewer
        (TEXT["classes"], [*TEXT["templates"][1:], TEXT["templates"][0]]),  # same templates, another order
        (["aeroplane", "tvmonitor", "sofa"], TEXT["templates"]),  # another class name
        (TEXT["classes"][::-1], TEXT["templates"]),  # same names, another order
    ],
    ids=["fewer-templates", "template-order", "class-name", "class-order"],
)
def test_cache_misses_when_names_or_templates_change(
    encoder: TextEncoder, fresh_cache: Path, classes: list[str], templates: list[str]
) -> None:
    calls = count_forwards(encoder)
    reference = compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"])
    n = len(calls)
    got = compute_class_embeddings(encoder, classes, templates)
    assert len(calls) > n, "a cached result for other names/templates was returned"
    assert got.shape == (len(classes), len(templates), 32)
    # Row c / column t is the embedding of templates[t].format(classes[c]) whatever the order.
    for c, name in enumerate(classes):
        for t, template in enumerate(templates):
            if name in TEXT["classes"] and template in TEXT["templates"]:
                ref = reference[TEXT["classes"].index(name), TEXT["templates"].index(template)]
                torch.testing.assert_close(got[c, t], ref, **TOL)
    # Going back to the first request is a hit again: both entries live side by side.
    n = len(calls)
    assert torch.equal(compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"]), reference)
    assert len(calls) == n


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a torch file")


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _not_a_tensor(path: Path) -> None:
    torch.save({"hello": 1}, path)


def _wrong_shape(path: Path) -> None:
    torch.save(torch.zeros(2, 2, 32), path)


@pytest.mark.parametrize(
    "corrupt",
    [_garbage, _truncated, _empty, _not_a_tensor, _wrong_shape],
    ids=["garbage", "truncated", "empty", "not-a-tensor", "wrong-shape"],
)
def test_corrupt_cache_entry_is_recomputed(
    encoder: TextEncoder, fresh_cache: Path, corrupt: Callable[[Path], None]
) -> None:
    calls = count_forwards(encoder)
    good = compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"])
    (entry,) = cache_files()
    corrupt(entry)
    n = len(calls)
    again = compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"])
    assert len(calls) > n
    assert torch.equal(again, good)
    # ... and the entry was repaired, so the next call is a hit.
    assert torch.equal(torch.load(entry, weights_only=True), good)
    n = len(calls)
    compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"])
    assert len(calls) == n


def test_use_cache_false_never_reads_or_writes(encoder: TextEncoder, fresh_cache: Path) -> None:
    emb = compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"], use_cache=False)
    assert not fresh_cache.exists() or not any(fresh_cache.iterdir())
    # Plant a valid-looking but wrong entry: use_cache=False must neither return nor overwrite it.
    compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"])
    (entry,) = cache_files()
    planted = torch.zeros_like(emb)
    torch.save(planted, entry)
    stamp = entry.stat().st_mtime_ns
    again = compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"], use_cache=False)
    assert torch.equal(again, emb)
    assert entry.stat().st_mtime_ns == stamp
    assert torch.equal(torch.load(entry, weights_only=True), planted)
    assert cache_files() == [entry]


def test_cache_dir_honours_environment(encoder: TextEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTSEG_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere" / "text_embeddings"
    compute_class_embeddings(encoder, TEXT["classes"], TEXT["templates"])
    assert len(list((tmp_path / "elsewhere" / "text_embeddings").glob("*.pt"))) == 1
    # Unset (or empty), the default is under the home directory; pointed at tmp_path so nothing real is touched.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OTSEG_CACHE_DIR", "")
    assert cache_dir() == tmp_path / "home" / ".cache" / "otseg" / "text_embeddings"
    monkeypatch.delenv("OTSEG_CACHE_DIR")
    assert cache_dir() == tmp_path / "home" / ".cache" / "otseg" / "text_embeddings"


# ------------------------------------------------------------------------------ 3. reference embedding files

REFERENCE_FILES = [
    ("voc12_otseg.npy", (20, 6, 512), torch.float16),
    ("context_otseg.npy", (59, 8, 512), torch.float16),
    ("coco_otseg.npy", (171, 8, 512), torch.float32),
]


def reference_file(name: str) -> Path:
    path = REFERENCE_EMBEDDINGS / name
    if not path.is_file():
        pytest.skip(f"{path} not found (set OTSEG_REFERENCE_EMBEDDINGS to the reference embeddings folder)")
    return path


@functools.cache
def _load_reference(name: str) -> torch.Tensor:
    return load_class_embeddings(reference_file(name))


@pytest.mark.parametrize(("name", "shape", "dtype"), REFERENCE_FILES, ids=[f[0] for f in REFERENCE_FILES])
def test_reference_files_load_as_published(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    emb = _load_reference(name)
    assert tuple(emb.shape) == shape
    assert emb.dtype == dtype  # the fp16 rounding is part of the published numbers: no silent upcast
    # Unit norm per prompt (not averaged over prompts); fp16 storage rounds each element, hence the looser bound.
    norms = emb.double().norm(dim=-1)
    tol = 2e-3 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=tol, rtol=0)
    assert torch.isfinite(emb).all()


PRESETS_WITH_FILES = [p for p in list_presets() if get_preset(p).reference_embeddings]


def test_presets_with_files_exist() -> None:
    # Guards the parametrisation below against silently testing nothing.
    assert {"voc12-inductive", "context59-inductive", "coco-inductive"} <= set(PRESETS_WITH_FILES)


@pytest.mark.parametrize("preset", PRESETS_WITH_FILES)
def test_reference_files_fit_the_presets(preset: str) -> None:
    cfg = get_preset(preset)
    emb = _load_reference(cfg.reference_embeddings)
    assert tuple(emb.shape) == (cfg.num_classes, cfg.num_prompts, cfg.head.embed_dim)


def wide_model(cfg: ModelConfig = VOC) -> OTSeg:
    """A small OTSeg whose text width is the real 512, so reference files fit (building ViT-B would be slow)."""
    return OTSeg(
        ModelConfig(
            vision=VisionConfig(
                image_size=32,
                patch_size=16,
                width=64,
                layers=2,
                heads=1,
                output_dim=512,
                num_prompt_tokens=2,
                deep_prompt_layers=1,
            ),
            head=HeadConfig(embed_dim=512, ffn_dim=64, output_size=32),
            class_names=cfg.class_names,
            unseen_classes=cfg.unseen_classes,
            templates=cfg.templates,
        )
    )


def test_set_class_embeddings_keeps_fp16_values_exactly() -> None:
    emb = _load_reference("voc12_otseg.npy")
    model = wide_model()
    model.set_class_embeddings(emb)
    assert model.class_embeddings.dtype == torch.float32
    # fp16 -> fp32 is exact; the reference promotes the same way, so anything else changes published scores.
    assert torch.equal(model.class_embeddings, emb.float())
    assert model.class_names == list(VOC.class_names)
    assert model.seen_mask.tolist() == [i not in VOC.unseen_classes for i in range(VOC.num_classes)]
    assert model.has_class_embeddings
    # The raw numpy array (what np.load gives) is accepted too, with the same values.
    again = wide_model()
    again.set_class_embeddings(np.load(reference_file("voc12_otseg.npy")))
    assert torch.equal(again.class_embeddings, emb.float())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("fmt", ["npy", "pt-tensor", "pt-dict", "safetensors"])
def test_load_formats(tmp_path: Path, fmt: str, dtype: torch.dtype) -> None:
    emb = torch.nn.functional.normalize(torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    emb = emb.to(dtype)
    if fmt == "npy":
        path = tmp_path / "emb.npy"
        np.save(path, emb.numpy())
    elif fmt == "pt-tensor":
        path = tmp_path / "emb.pt"
        torch.save(emb, path)
    elif fmt == "pt-dict":
        path = tmp_path / "emb.pt"
        torch.save({"class_embeddings": emb}, path)
    else:
        path = tmp_path / "emb.safetensors"
        save_file({"class_embeddings": emb}, str(path))
    got = load_class_embeddings(path)
    assert got.dtype == dtype
    assert torch.equal(got, emb)
    # A str path works as well as a Path.
    assert torch.equal(load_class_embeddings(str(path)), emb)


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope_otseg.npy"
    with pytest.raises(FileNotFoundError, match=r"nope_otseg\.npy"):
        load_class_embeddings(path)


def test_load_wrong_extension_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.txt"
    path.write_text("0.1 0.2\n")
    with pytest.raises(ValueError, match=r"embeddings\.txt") as info:
        load_class_embeddings(path)
    assert ".npy" in str(info.value)  # says what would be accepted


@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 4, 8), (8,)])
@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
def test_load_wrong_rank_names_the_file(tmp_path: Path, shape: tuple[int, ...], suffix: str) -> None:
    t = torch.zeros(shape)
    path = tmp_path / f"bad_rank{suffix}"
    if suffix == ".npy":
        np.save(path, t.numpy())
    elif suffix == ".pt":
        torch.save(t, path)
    else:
        save_file({"class_embeddings": t}, str(path))
    with pytest.raises(ValueError, match=rf"bad_rank\{suffix}") as info:
        load_class_embeddings(path)
    assert "(K, N, D)" in str(info.value)


@pytest.mark.parametrize(
    ("suffix", "write"),
    [
        (".npy", lambda p: p.write_bytes(b"not numpy")),
        (".pt", lambda p: p.write_bytes(b"not torch")),
        (".safetensors", lambda p: p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")),
        (".pt", lambda p: torch.save({"something_else": torch.zeros(2, 2, 2)}, p)),
        (".npy", lambda p: np.save(p, np.zeros((2, 2, 2), dtype=np.int64))),
    ],
    ids=["npy-garbage", "pt-garbage", "safetensors-garbage", "pt-wrong-key", "npy-integers"],
)
def test_load_unreadable_file_names_it(tmp_path: Path, suffix: str, write: Callable[[Path], None]) -> None:
    path = tmp_path / f"broken{suffix}"
    write(path)
    with pytest.raises(ValueError, match=rf"broken\{suffix}"):
        load_class_embeddings(path)


def test_set_class_embeddings_rejects_bad_shapes() -> None:
    model = wide_model()
    with pytest.raises(ValueError, match=r"\(K, N, D\)"):
        model.set_class_embeddings(torch.zeros(20, 512))
    with pytest.raises(ValueError, match="512"):
        model.set_class_embeddings(torch.zeros(20, 6, 32))
    with pytest.raises(ValueError, match="names"):
        model.set_class_embeddings(torch.zeros(3, 6, 512), class_names=["a", "b"])
    assert not model.has_class_embeddings


# ------------------------------------------------------------------------------------------- 4. model API


def tiny_config() -> ModelConfig:
    # The tiny CLIP's image tower has 3 blocks (golden README §5), so the backbone must too: the loader is
    # strict about unexpected keys. Slide crops of 32 with stride 24 make a 40x56 image take 2x3 windows.
    return ModelConfig(
        name="tiny",
        vision=VisionConfig(
            image_size=32,
            patch_size=16,
            width=64,
            layers=3,
            heads=1,
            output_dim=32,
            num_prompt_tokens=2,
            deep_prompt_layers=1,
        ),
        text=text_config(),
        head=HeadConfig(embed_dim=32, ffn_dim=64, output_size=32),
        dataset="voc12",
        class_names=VOC.class_names,
        unseen_classes=VOC.unseen_classes,
        templates="templates_6",
        crop_size=32,
        stride=24,
    )


@pytest.fixture
def tiny_model() -> OTSeg:
    torch.manual_seed(0)
    model = OTSeg(tiny_config())
    # The tiny CLIP's text tower has 4 heads; OpenAI's width // 64 rule would give 1.
    load_clip_into(model, golden_file("openai_clip_jit.pt"), text_heads=4)
    return model.eval()


def test_load_clip_into_attaches_the_reference_text_tower(tiny_model: OTSeg, fresh_cache: Path) -> None:
    assert tiny_model.text_encoder is not None
    assert tiny_model.config.text == text_config()
    assert not any(p.requires_grad for p in tiny_model.text_encoder.parameters())
    # Read from the fp16 TorchScript archive, the tower still reproduces the reference's embeddings.
    emb = compute_class_embeddings(tiny_model.text_encoder, TEXT["classes"], TEXT["templates"])
    torch.testing.assert_close(emb, TEXT["output_normalized"], **TOL)


def test_load_clip_into_names_the_file_on_mismatch() -> None:
    cfg = tiny_config()
    cfg.vision.layers = 2  # the checkpoint has 3 blocks: resblocks.2 is unexpected
    path = golden_file("openai_clip_jit.pt")
    with pytest.raises(ValueError, match=r"openai_clip_jit\.pt"):
        load_clip_into(OTSeg(cfg), path, text_heads=4)


def test_attach_clip_text_tower_keeps_the_backbone_and_checks_the_width() -> None:
    torch.manual_seed(0)
    model = OTSeg(tiny_config())
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    attach_clip_text_tower(model, golden_file("openai_clip_jit.pt"), text_heads=4)
    assert model.text_encoder is not None and model.config.text == text_config()
    after = model.backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in backbone.items())  # the image tower was not reloaded

    cfg = tiny_config()
    cfg.head.embed_dim = 48  # the golden CLIP embeds to 32
    with pytest.raises(ValueError, match=r"openai_clip_jit\.pt embeds to 32 dimensions.*expects 48"):
        attach_clip_text_tower(OTSeg(cfg), golden_file("openai_clip_jit.pt"), text_heads=4)


def test_set_classes(tiny_model: OTSeg, fresh_cache: Path) -> None:
    names = ["cat", "sofa", "wall"]
    tiny_model.set_classes(names)
    assert tiny_model.class_embeddings.shape == (3, len(TEMPLATES_6), 32)
    assert tiny_model.class_embeddings.dtype == torch.float32
    assert tiny_model.num_classes == 3
    assert tiny_model.class_names == names
    # cat: a seen VOC training class; sofa: a VOC class held out as unseen; wall: not a VOC class at all.
    assert tiny_model.seen_mask.tolist() == [True, False, False]
    assert tiny_model.has_class_embeddings
    assert tiny_model.text_encoder is not None
    expected = compute_class_embeddings(tiny_model.text_encoder, names, TEMPLATES_6, use_cache=False)
    assert torch.equal(tiny_model.class_embeddings, expected)

    torch.manual_seed(1)
    scores = tiny_model.predict_scores(torch.randn(1, 3, 40, 56))
    assert scores.shape == (1, 3, 40, 56)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize(
    ("templates", "n"),
    [(["a {} in a scene.", "itap of a {}."], 2), (["{}"], 1), ("templates_8", 8), (TEMPLATES_8, 8)],
    ids=["custom-list", "bare", "set-name", "set-tuple"],
)
def test_set_classes_with_templates(tiny_model: OTSeg, fresh_cache: Path, templates: list[str] | str, n: int) -> None:
    tiny_model.set_classes(["cat", "dog"], templates=templates)
    assert tiny_model.class_embeddings.shape == (2, n, 32)
    norms = tiny_model.class_embeddings.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize(
    ("names", "templates", "error", "match"),
    [
        ([], None, ValueError, "empty"),
        (["cat", "  "], None, ValueError, "empty"),
        (["cat", ""], None, ValueError, r"position.*\[1\]"),
        (["cat", "dog", "cat"], None, ValueError, "'cat'"),
        (["cat", "dog", " cat "], None, ValueError, "'cat'"),  # names are compared after stripping
        ("cat", None, TypeError, "single string"),
        (["cat", None], None, TypeError, "position 1"),
        (["cat"], ["a photo of a cat."], ValueError, r"\{\}"),
        (["cat"], ["a {} next to a {}."], ValueError, r"\{\}"),
        (["cat"], ["a {} of {size}."], ValueError, "format"),
        (["cat"], [], ValueError, "template"),
        (["cat"], "templates_99", KeyError, "templates_99"),
    ],
    ids=[
        "empty-list",
        "blank-name",
        "empty-name",
        "duplicate",
        "duplicate-after-strip",
        "single-string",
        "not-a-string",
        "template-without-braces",
        "template-two-braces",
        "template-other-field",
        "no-templates",
        "unknown-set",
    ],
)
def test_set_classes_validates(
    tiny_model: OTSeg,
    fresh_cache: Path,
    names: object,
    templates: object,
    error: type[Exception],
    match: str,
) -> None:
    tiny_model.set_classes(["cat", "sofa", "wall"])
    before = tiny_model.class_embeddings.clone()
    with pytest.raises(error, match=match):
        tiny_model.set_classes(names, templates=templates)  # type: ignore[arg-type]
    # A rejected call leaves the model as it was.
    assert tiny_model.class_names == ["cat", "sofa", "wall"]
    assert torch.equal(tiny_model.class_embeddings, before)


def test_validate_class_names_strips_and_accepts_any_sequence() -> None:
    assert validate_class_names((" cat", "dog ")) == ["cat", "dog"]
    assert validate_class_names(n for n in ["a", "b"]) == ["a", "b"]


def test_set_classes_without_text_encoder_says_how_to_fix() -> None:
    model = OTSeg(tiny_config())
    with pytest.raises(RuntimeError, match="set_class_embeddings") as info:
        model.set_classes(["cat"])
    assert "clip" in str(info.value).lower()


def test_predict_before_embeddings_says_what_to_call(tiny_model: OTSeg) -> None:
    with pytest.raises(RuntimeError, match="set_classes") as info:
        tiny_model.predict_scores(torch.zeros(1, 3, 32, 32))
    assert "set_class_embeddings" in str(info.value)
