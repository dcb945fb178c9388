"""The built-in demo model: OTSeg+ trained inductively on the miniature world, `Predictor.from_pretrained("demo")`.

The package ships it twice, in two forms with one content:

- `otseg/builtin_models/demo/`: an ordinary otseg model folder (`save_pretrained`: `config.json` with the class
  names and the vocabulary, `model.safetensors` with the CLIP text tower, so any class name can be embedded), which
  the library reads with its ordinary loader and nothing of the demo;
- `demo_model.safetensors` beside this file: the compact pack it is written from, holding only what training changed
  (the VPT prompts, the head, the class embeddings), about 0.6 MB; the frozen towers come from the shipped tiny CLIP.

`write_demo_model_folder` writes the folder from the two packs (`python -m otseg.demo.rebuild model-folder --out
DIR` writes it and compares it, tensor for tensor, with the shipped folder), checking the SHA-256 that the pack
records for the whole model. To rebuild the pack itself from scratch and compare it bit for bit (the tiny CLIP comes
from its own pack)::

    python -m otseg.demo.rebuild demo-model --out demo_model.safetensors

For other demo settings (another seed, the quick sizes), `demo_model_dir` trains the model on first use (one
inductive OTSeg run of the demo, minutes on a CPU) and caches it under `<otseg cache>/demo/`; `otseg demo` also
saves the model it trains there.

The model only knows its world's words; its `config.json` lists them (`vocabulary`), and `Predictor` says so when
a class name uses other words.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from otseg.config import ModelConfig, Setting
from otseg.demo.presets import DemoSettings
from otseg.demo.tiny_clip import _pack_metadata, _shipped_state, compare_with_shipped, state_digest, tiny_clip_path
from otseg.demo.training import demo_datasets, train_demo_model
from otseg.demo.world import caption_vocabulary, demo_cache_root, world_dir
from otseg.errors import BadValueError
from otseg.formats.openai_clip import read_clip_state_dict
from otseg.model.build import load_clip_into
from otseg.model.segmentor import OTSeg
from otseg.model_files.otseg_folder import save_pretrained
from otseg.utils import atomic_write

__all__ = [
    "SHIPPED_MODEL",
    "demo_model_dir",
    "demo_model_key",
    "pack_demo_model",
    "same_model_folder",
    "save_demo_model",
    "write_demo_model_folder",
]

DEMO_MODEL_METHOD = "otseg+"
DEMO_MODEL_SETTING: Setting = "inductive"
SHIPPED_MODEL = Path(__file__).with_name("demo_model.safetensors")
PACK_FORMAT = "otseg-demo-model-pack/1"
# The rebuild trains with this many threads, as each `otseg demo` worker does on a 2-core machine: matrix
# products may round differently with another count.
REBUILD_THREADS = 1


def demo_model_key(settings: DemoSettings) -> str:
    """Hash of what determines the demo model: the world, the tiny CLIP, and the recipe of its OTSeg run (the
    baseline's schedule left out: it does not change this model)."""
    recipe = asdict(settings.recipe)
    recipe.pop("baseline_iters")
    spec = {
        "world": settings.world.key(),
        "clip": settings.clip.key(settings.world),
        "recipe": recipe,
        "method": DEMO_MODEL_METHOD,
        "setting": DEMO_MODEL_SETTING,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _model_dir(settings: DemoSettings, cache: str | os.PathLike | None) -> Path:
    base = Path(cache) if cache is not None else demo_cache_root()
    return base / f"model-{demo_model_key(settings)}"


def _extra(settings: DemoSettings) -> dict[str, Any]:
    return {
        "demo": {"seed": settings.world.seed, "method": DEMO_MODEL_METHOD, "setting": DEMO_MODEL_SETTING},
        "vocabulary": sorted(caption_vocabulary()),
    }


def save_demo_model(model: OTSeg, settings: DemoSettings, cache: str | os.PathLike | None = None) -> Path:
    """Store a trained demo model (OTSeg+, inductive) where `demo_model_dir` finds it."""
    return save_pretrained(model, _model_dir(settings, cache), extra=_extra(settings))  # config.json last


def _model_tensors(model: OTSeg) -> dict[str, Tensor]:
    """Everything `save_pretrained` stores: the state dict, the class embeddings and the seen mask."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors["class_embeddings"] = model.class_embeddings.detach().cpu().contiguous()
    tensors["seen_mask"] = model.seen_mask.detach().cpu().to(torch.uint8)
    return tensors


def _from_clip(config: ModelConfig, clip_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors of a model of `config` freshly built (seeded) with the tiny CLIP loaded: what needs no storing."""
    torch.manual_seed(0)
    model = OTSeg(config)
    load_clip_into(model, clip_state)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def pack_demo_model(model: OTSeg, settings: DemoSettings, clip_state: dict[str, Tensor]) -> tuple[dict, dict]:
    """The compact form of a trained demo model: (tensors, metadata) for `safetensors.torch.save_file`.

    Tensors equal to those of a fresh model with the tiny CLIP loaded (the frozen towers) are left out.
    """
    full = _model_tensors(model)
    base = _from_clip(model.config, clip_state)
    tensors = {
        k: v for k, v in full.items() if k not in base or v.dtype != base[k].dtype or not torch.equal(v, base[k])
    }
    metadata = {
        "format": PACK_FORMAT,
        "key": demo_model_key(settings),
        "sha256": state_digest(full),
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
        "class_names": json.dumps(list(model.class_names)),
        "extra": json.dumps(_extra(settings), sort_keys=True),
    }
    return tensors, metadata


def unpack_demo_model(path: str | os.PathLike, clip_state: dict[str, Tensor]) -> tuple[OTSeg, dict[str, Any]]:
    """Rebuild the demo model from a pack and the tiny CLIP, checked against the pack's SHA-256 -> (model, extra)."""
    path = Path(path)
    metadata = _pack_metadata(path)
    if metadata.get("format") != PACK_FORMAT:
        raise BadValueError(
            f"{path} is not a demo model pack (format {metadata.get('format')!r}, expected {PACK_FORMAT})"
        )
    config = ModelConfig.from_dict(json.loads(metadata["config"]))
    with safe_open(str(path), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    state = {**_from_clip(config, clip_state), **stored}
    digest = state_digest(state)
    if digest != metadata["sha256"]:
        raise BadValueError(
            f"{path}: the unpacked demo model has SHA-256 {digest[:16]}..., the pack recorded "
            f"{metadata['sha256'][:16]}...: the file is damaged; reinstall otseg, or rebuild it with "
            "`python -m otseg.demo.rebuild demo-model --out FILE`"
        )
    embeddings, seen = state.pop("class_embeddings"), state.pop("seen_mask")
    model = OTSeg(config)
    load_clip_into(model, clip_state)  # builds and attaches the text tower
    model.load_state_dict(state, strict=True)
    names = json.loads(metadata["class_names"])
    model.set_class_embeddings(embeddings, class_names=names, seen=torch.nonzero(seen).flatten().tolist())
    return model.eval(), json.loads(metadata["extra"])


def write_demo_model_folder(out: str | os.PathLike) -> Path:
    """Write the built-in demo model, from the two shipped packs (the tiny CLIP's and the demo model's), as an
    ordinary otseg model folder: `config.json` (config, class names, vocabulary) and `model.safetensors` (the
    prompted image tower, the head, the CLIP text tower, the class embeddings and seen mask), as `save_pretrained`
    writes it. This is how the package's `otseg/builtin_models/demo/` is made, which `Predictor.from_pretrained("demo")`
    reads with the ordinary loader (`python -m otseg.demo.rebuild model-folder --out DIR` writes and compares it).

    Raises:
        ValueError: a shipped pack is missing, damaged, or for another recipe than the default one.
    """
    cfg = DemoSettings.full(0)
    key = demo_model_key(cfg)
    if not SHIPPED_MODEL.is_file() or _pack_metadata(SHIPPED_MODEL).get("key") != key:
        raise BadValueError(f"{SHIPPED_MODEL} is missing or not the demo model of the default recipe (key {key})")
    shipped_clip = _shipped_state(cfg.clip.key(cfg.world))
    if shipped_clip is None:
        raise BadValueError("the package ships no tiny CLIP for the default recipe (otseg/demo/tiny_clip.safetensors)")
    model, extra = unpack_demo_model(SHIPPED_MODEL, shipped_clip[0])
    return save_pretrained(model, out, extra=extra)


def same_model_folder(written: Path, shipped: Path) -> int:
    """Print whether the model folder `written` holds the same model as `shipped` (the same tensors, by the SHA-256
    in its header, and the same `config.json`); the exit status of the rebuild command: 0 when so, 1 otherwise."""
    if not (shipped / "config.json").is_file():
        print(f"no shipped model folder at {shipped} to compare with")
        return 0

    def digest(folder: Path) -> str | None:
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            return (f.metadata() or {}).get("otseg_sha256")

    same_config = json.loads((written / "config.json").read_text()) == json.loads((shipped / "config.json").read_text())
    same = same_config and digest(written) == digest(shipped)
    print(f"identical to the shipped folder {shipped}" if same else f"DIFFERS from the shipped folder {shipped}")
    return 0 if same else 1


def demo_model_dir(
    seed: int = 0, progress: bool = True, cache: str | os.PathLike | None = None, settings: DemoSettings | None = None
) -> Path:
    """The folder of the demo model: cached, else unpacked from the shipped pack, else trained (stage messages are
    printed)."""
    cfg = settings or DemoSettings.full(seed)
    target = _model_dir(cfg, cache)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    clip_state = read_clip_state_dict(tiny_clip_path(cfg.world, cfg.clip, cache=cache, progress=progress))
    if SHIPPED_MODEL.is_file() and _pack_metadata(SHIPPED_MODEL).get("key") == demo_model_key(cfg):
        model, extra = unpack_demo_model(SHIPPED_MODEL, clip_state)
        return save_pretrained(model, target, extra=extra)
    print("building the demo model (once; cached afterwards): world, tiny CLIP, OTSeg+ inductive training", flush=True)
    model = _train(cfg, clip_state, cache, progress)
    return save_demo_model(model, cfg, cache)


def _train(cfg: DemoSettings, clip_state: dict[str, Tensor], cache: str | os.PathLike | None, progress: bool) -> OTSeg:
    """One inductive OTSeg run with the demo recipe, exactly as `otseg demo` trains it; its config is OTSeg+'s
    (`DEMO_MODEL_METHOD`: ensemble weight 0.5)."""
    root = world_dir(cfg.world, cache)
    train_set, _ = demo_datasets(cfg, root)
    base = Path(cache) if cache is not None else demo_cache_root()
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".train-", dir=base) as work:
        model = train_demo_model(cfg, DEMO_MODEL_METHOD, DEMO_MODEL_SETTING, clip_state, train_set, Path(work),
                                 progress=progress)  # fmt: skip
    return model


def rebuild_demo_model(out: str | Path, progress: bool = True) -> int:
    """Train the built-in demo model (OTSeg+, inductive, seed 0) from scratch as `otseg demo` does, at
    `REBUILD_THREADS` threads, write it as a pack to `out`, and compare it with the shipped one (`python -m
    otseg.demo.rebuild demo-model`). Returns the command's exit status: 0 when identical (or nothing is shipped)."""
    torch.set_num_threads(REBUILD_THREADS)
    cfg = DemoSettings.full(0)
    clip_state = read_clip_state_dict(tiny_clip_path(cfg.world, cfg.clip, progress=progress))
    with tempfile.TemporaryDirectory() as cache:
        model = _train(cfg, clip_state, cache, progress=progress)
    tensors, metadata = pack_demo_model(model, cfg, clip_state)
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    print(f"wrote {out}: SHA-256 of the model {metadata['sha256']}")
    return compare_with_shipped(metadata, SHIPPED_MODEL)


if __name__ == "__main__":  # the command moved (see otseg.demo.rebuild); say where rather than do nothing
    raise SystemExit("the rebuild command is: python -m otseg.demo.rebuild demo-model --out FILE")
