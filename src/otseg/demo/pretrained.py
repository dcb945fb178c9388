"""The built-in demo model: OTSeg+ trained inductively on the miniature world, for `Predictor.from_pretrained("demo")`.

`otseg demo` saves it as it goes; when it is not cached yet, `demo_model_dir` builds it: the world and the tiny CLIP
(both cached), then one inductive OTSeg training run with the demo recipe (a few minutes on 2 CPU cores). It is
stored in otseg's own format (`save_pretrained`: safetensors + config.json, with the CLIP text tower, so any class
name can be embedded), under `<otseg cache>/demo/`, keyed by the world, the CLIP recipe and the training recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from otseg.demo.world import demo_cache_root

if TYPE_CHECKING:
    from otseg.demo.run import DemoSettings

__all__ = ["demo_model_dir", "demo_model_key", "save_demo_model"]

DEMO_MODEL_METHOD = "otseg+"
DEMO_MODEL_SETTING = "inductive"


def demo_model_key(settings: DemoSettings) -> str:
    spec = {
        "world": settings.world.key(),
        "clip": settings.clip.key(settings.world),
        "recipe": asdict(settings.recipe),
        "method": DEMO_MODEL_METHOD,
        "setting": DEMO_MODEL_SETTING,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _model_dir(settings: DemoSettings, cache: str | os.PathLike | None) -> Path:
    base = Path(cache) if cache is not None else demo_cache_root()
    return base / f"model-{demo_model_key(settings)}"


def save_demo_model(model: Any, settings: DemoSettings, cache: str | os.PathLike | None = None) -> Path:
    """Store a trained demo model (OTSeg+, inductive) where `demo_model_dir` finds it."""
    from otseg.model.checkpoint import save_pretrained

    target = _model_dir(settings, cache)
    extra = {"demo": {"seed": settings.world.seed, "method": DEMO_MODEL_METHOD, "setting": DEMO_MODEL_SETTING}}
    save_pretrained(model, target, extra=extra)  # each file is written atomically; config.json last
    return target


def demo_model_dir(
    seed: int = 0, progress: bool = True, cache: str | os.PathLike | None = None, settings: DemoSettings | None = None
) -> Path:
    """The folder of the demo model, trained and cached on first use (stage messages are printed)."""
    from otseg.clip.loading import read_clip_state_dict
    from otseg.demo.run import DemoSettings, demo_datasets, train_demo_model
    from otseg.demo.tiny_clip import tiny_clip_path
    from otseg.demo.world import world_dir

    cfg = settings or DemoSettings.full(seed)
    target = _model_dir(cfg, cache)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    print("building the demo model (once; cached afterwards): world, tiny CLIP, OTSeg+ inductive training", flush=True)
    root = world_dir(cfg.world, cache)
    clip_state = read_clip_state_dict(tiny_clip_path(cfg.world, cfg.clip, cache=cache, progress=progress))
    train_set, _ = demo_datasets(cfg, root)
    base = Path(cache) if cache is not None else demo_cache_root()
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".train-", dir=base) as work:
        model = train_demo_model(cfg, DEMO_MODEL_METHOD, DEMO_MODEL_SETTING, clip_state, train_set, Path(work),
                                 progress=progress)  # fmt: skip
    model.head.cfg.ensemble_weight = 0.5
    return save_demo_model(model, cfg, cache)
