"""Issue 11: search for a tiny CLIP recipe whose frozen patch features reach the world card's linear probe target.

Pretrains one candidate tiny CLIP (`train_tiny_clip`, CLIP's image-caption InfoNCE only) and, at the given steps
(through its `on_step` callback) and at the end, measures the method-agnostic world-card properties on the default
segmentation world (seed 0):

* prompt spread ratio and between-class cosine (`card.prompt_geometry`, the reference's six templates);
* the linear probe mIoU on the frozen patch embeddings (`card.dense_features`, `card.linear_probe_miou`);
* the zero-shot single-object accuracy (`tiny_clip.evaluate_zero_shot`), a diagnostic.

It never trains or evaluates an OTSeg/OTSeg+ segmentor. With `--time-demo` it times the demo's ZegCLIP-style
training step (inductive, batch 8) for this candidate's backbone shape and for the shipped one, alternating, in the
same process, and reports the ratio.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=src python research/tiny_clip_probe.py --tag base --steps 1500 \
        --eval-at 500,1000 [--batch 64 --lr 1e-3 --vision-width 128 --vision-layers 3 --captions where] \
        [--time-demo] [--timing-only]

Each result is printed and appended as one JSON line to `--log` (default research/results/tiny_clip_probe.jsonl).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otseg.clip.model import CLIP
from otseg.demo import world as world_module
from otseg.demo.card import dense_features, linear_probe_miou, load_split, prompt_geometry, text_embeddings
from otseg.demo.tiny_clip import TinyClipConfig, evaluate_zero_shot, train_tiny_clip
from otseg.demo.world import CLASS_NAMES, SceneObject, WorldConfig, generate_world

# The default world (seed 0) of this generator version; a variant gets its own folder (see `main`).
WORLD_DIR = Path(tempfile.gettempdir()) / f"otseg-probe-world-{WorldConfig().key()}"


# ---- caption variants (applied by replacing `world.object_phrase`; the images are unchanged) ----------------

_ORIGINAL_PHRASE = world_module.object_phrase


def _vertical_place(o: SceneObject) -> str:
    """Where an object lies vertically (its visible mask's centroid), in thirds: horizontal flips keep it true."""
    ys = np.nonzero(o.mask)[0]
    third = int(3 * float(ys.mean()) / o.mask.shape[0])
    return ("at the top", "in the middle", "at the bottom")[min(third, 2)]


def _phrase_where(rng: np.random.Generator, o: SceneObject) -> str:
    """The shipped phrase, followed by where the object lies ("... at the top"), unless it is a portrait."""
    phrase = _ORIGINAL_PHRASE(rng, o)
    return phrase if o.portrait else f"{phrase} {_vertical_place(o)}"


def _phrase_shape(rng: np.random.Generator, o: SceneObject) -> str:
    """The shipped phrase with the shape always named ("red striped circle")."""
    phrase = _ORIGINAL_PHRASE(rng, o)
    return phrase if phrase.endswith(o.shape) else f"{phrase} {o.shape}"


def _phrase_shape_where(rng: np.random.Generator, o: SceneObject) -> str:
    phrase = _phrase_shape(rng, o)
    return phrase if o.portrait else f"{phrase} {_vertical_place(o)}"


CAPTIONS: dict[str, Callable[[np.random.Generator, SceneObject], str]] = {
    "shipped": _ORIGINAL_PHRASE,
    "where": _phrase_where,
    "shape": _phrase_shape,
    "shape-where": _phrase_shape_where,
}


# ---- measurements -----------------------------------------------------------------------------------------


def world_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The default segmentation world (seed 0), written once to a temp folder, as (images, labels) per split."""
    if not (WORLD_DIR / "world.json").is_file():
        generate_world(WORLD_DIR, WorldConfig())
    return {split: load_split(WORLD_DIR, split) for split in ("train", "val")}


def use_checker_cell(checker_cell: str) -> tuple[float, float]:
    """Switch this process to a world variant whose checkered cells are `checker_cell` ("LOW,HIGH" px): the
    generator reads `world.CHECKER_CELL` at call time, so the pretraining corpus and the segmentation world both
    change, and `world_splits` writes the variant to its own folder. Returns (low, high)."""
    global WORLD_DIR
    low, high = (float(v) for v in checker_cell.split(","))
    world_module.CHECKER_CELL = (low, high)
    WORLD_DIR = WORLD_DIR.with_name(f"{WORLD_DIR.name}-checker{low:g}-{high:g}")
    return low, high


def handmade_features(images: np.ndarray, patch: int = 8) -> torch.Tensor:
    """Hand-made local features of each patch (B, D, h, w), standardised: per-channel mean, std, max and min, and
    the magnitude of the patch's 2-D spectrum (grey, mean removed) and its square root. What a patch shows by
    itself, without any learnt feature: the level the tiny CLIP's patch tokens are compared with."""
    x = torch.from_numpy(images).float() / 255  # (B, H, W, 3)
    b, h, w, _ = x.shape
    p = x.reshape(b, h // patch, patch, w // patch, patch, 3).permute(0, 1, 3, 2, 4, 5)
    p = p.reshape(b, h // patch, w // patch, patch * patch, 3)
    grey = p.mean(-1).reshape(b, h // patch, w // patch, patch, patch)
    spectrum = torch.fft.rfft2(grey - grey.mean((-1, -2), keepdim=True)).abs().flatten(3)
    f = torch.cat([p.mean(3), p.std(3), p.amax(3), p.amin(3), spectrum, spectrum.sqrt()], dim=-1)
    f = (f - f.mean((0, 1, 2))) / (f.std((0, 1, 2)) + 1e-6)
    return f.permute(0, 3, 1, 2).contiguous()


def layers_table(clip_file: str, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """Probe every block's patch tokens of a checkpoint ("shipped": the packaged tiny CLIP), raw and through
    ln_post and proj (the card's features are the last block's, through ln_post and proj)."""
    from otseg.clip.loading import load_openai_clip
    from otseg.demo.tiny_clip import tiny_clip_path

    if clip_file == "shipped":
        cache = Path(tempfile.gettempdir()) / "otseg-probe-cache"
        clip_file = str(tiny_clip_path(WorldConfig(), cache=cache, progress=False))
    model = load_openai_clip(clip_file).eval()
    visual = model.visual
    (train_x, train_y), (val_x, val_y) = splits["train"], splits["val"]
    rows = []
    for b in range(len(visual.transformer.resblocks) + 1):
        raw_train, raw_val = dense_features(model, train_x, after_block=b), dense_features(model, val_x, after_block=b)

        @torch.no_grad()
        def projected(raw: torch.Tensor) -> torch.Tensor:
            t = visual.ln_post(raw.flatten(2).transpose(1, 2)) @ visual.proj  # LayerNorm ignores the L2 scale
            return torch.nn.functional.normalize(t, dim=-1).transpose(1, 2).reshape(len(raw), -1, *raw.shape[2:])

        rows.append({
            "block": b,
            "probe_raw": round(linear_probe_miou(raw_train, train_y, raw_val, val_y), 2),
            "probe_ln_post_proj": round(
                linear_probe_miou(projected(raw_train), train_y, projected(raw_val), val_y), 2
            ),
        })  # fmt: skip
    return rows


def layer_probes(model: CLIP, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Diagnostic probes on the raw tokens of the last two blocks (where the card's proj loses information)."""
    (train_x, train_y), (val_x, val_y) = splits["train"], splits["val"]
    layers = len(model.visual.transformer.resblocks)
    probes = {}
    for b in (layers - 1, layers):
        train_f = dense_features(model, train_x, after_block=b)
        val_f = dense_features(model, val_x, after_block=b)
        probes[f"probe_raw_block{b}"] = round(linear_probe_miou(train_f, train_y, val_f, val_y), 2)
    return probes


def measure(model: CLIP, splits: dict[str, tuple[np.ndarray, np.ndarray]], world: WorldConfig) -> dict[str, float]:
    """The card's text geometry and linear probe, and the zero-shot accuracy, of a (training) model."""
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    geometry = prompt_geometry(text_embeddings(model, CLASS_NAMES))
    (train_x, train_y), (val_x, val_y) = splits["train"], splits["val"]
    probe = linear_probe_miou(dense_features(model, train_x), train_y, dense_features(model, val_x), val_y)
    zero_shot = evaluate_zero_shot(model, world)
    model.train(was_training)
    return {
        "spread_ratio": round(geometry["prompt_spread_ratio"], 3),
        "within_cos": round(geometry["within_class_cosine"], 3),
        "between_cos": round(geometry["between_class_cosine"], 3),
        "probe": round(probe, 2),
        "zs_seen": zero_shot["accuracy_seen"],
        "zs_unseen": zero_shot["accuracy_unseen"],
        "measure_s": round(time.perf_counter() - t0, 1),
    }


def demo_step_seconds(clip_cfg: TinyClipConfig, steps: int = 40, skip: int = 8) -> float:
    """Median seconds of one ZegCLIP-style inductive training step of the demo (batch 8, the regular trainer),
    for a backbone of `clip_cfg`'s shape (random weights: the cost does not depend on them)."""
    from otseg.demo.presets import DemoRecipe, DemoSettings
    from otseg.demo.training import demo_datasets, train_demo_model

    world = WorldConfig()
    settings = DemoSettings(world, clip_cfg, DemoRecipe(iters=steps, eval_points=0))
    torch.manual_seed(0)
    state = CLIP(clip_cfg.vision_config(world.image_size), clip_cfg.text_config()).state_dict()
    train_set, _ = demo_datasets(settings, WORLD_DIR)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as work:
        train_demo_model(
            settings, "zegclip", "inductive", state, train_set, Path(work) / "run", progress=False,
            on_step=lambda _: stamps.append(time.perf_counter()),
        )  # fmt: skip
    return statistics.median(np.diff(stamps[skip:]).tolist())


def time_demo(candidate: TinyClipConfig, rounds: int = 2) -> dict[str, float]:
    """The demo step of the candidate and of the shipped CLIP, alternated `rounds` times; medians and ratio."""
    shipped, mine = [], []
    for _ in range(rounds):
        shipped.append(demo_step_seconds(TinyClipConfig()))
        mine.append(demo_step_seconds(candidate))
    s, c = statistics.median(shipped), statistics.median(mine)
    return {
        "demo_step_shipped_s": round(s, 4),
        "demo_step_candidate_s": round(c, 4),
        "demo_step_ratio": round(c / s, 3),
    }


# ---- main -------------------------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> TinyClipConfig:
    return dataclasses.replace(
        TinyClipConfig(),
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        weight_decay=args.wd,
        patch_size=args.patch,
        vision_width=args.vision_width,
        vision_layers=args.vision_layers,
        text_width=args.text_width,
        text_layers=args.text_layers,
        embed_dim=args.embed_dim,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tag", required=True, help="the candidate's name in the log")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--eval-at", default="", help="comma-separated steps to measure midway (the end is always)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--vision-width", type=int, default=128)
    p.add_argument("--vision-layers", type=int, default=3)
    p.add_argument("--text-width", type=int, default=64)
    p.add_argument("--text-layers", type=int, default=3)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--captions", choices=sorted(CAPTIONS), default="shipped")
    p.add_argument("--time-demo", action="store_true", help="also time the demo's ZegCLIP step vs the shipped CLIP")
    p.add_argument("--timing-only", action="store_true", help="only time the demo step (no pretraining)")
    p.add_argument(
        "--timing-shapes",
        default="",
        help="with --timing-only: comma-separated WIDTH:LAYERS:EMBED:PATCH vision shapes to time instead of this one",
    )
    p.add_argument("--layers-of", default="", help="only probe every block of this checkpoint ('shipped')")
    p.add_argument("--save", default="", help="write the pretrained state dict here (OpenAI key names)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--checker-cell", default="",
        help="a world variant: the checkered pattern's cell size range in px, LOW,HIGH (shipped: 3.5,4.5)",
    )  # fmt: skip
    p.add_argument("--handmade-only", action="store_true", help="only probe hand-made local features of the world")
    p.add_argument("--log", default=str(Path(__file__).with_name("results") / "tiny_clip_probe.jsonl"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    cfg = _config(args)
    world = WorldConfig()
    record: dict[str, Any] = {
        "tag": args.tag, "world_version": world_module.GENERATOR_VERSION, "captions": args.captions,
        "config": dataclasses.asdict(cfg),
    }  # fmt: skip
    if args.checker_cell:
        record["checker_cell"] = list(use_checker_cell(args.checker_cell))
    splits = world_splits()

    def log(entry: dict[str, Any]) -> None:
        line = json.dumps({**record, **entry})
        print(line, flush=True)
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        with open(args.log, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    if args.handmade_only:
        (train_x, train_y), (val_x, val_y) = splits["train"], splits["val"]
        probe = linear_probe_miou(handmade_features(train_x), train_y, handmade_features(val_x), val_y)
        log({"step": 0, "handmade_probe": round(probe, 2)})
        return
    if args.layers_of:
        for row in layers_table(args.layers_of, splits):
            log({"checkpoint": args.layers_of, **row})
        return
    if args.timing_only and args.timing_shapes:
        for shape in args.timing_shapes.split(","):
            width, layers, embed, patch = (int(v) for v in shape.split(":"))
            shaped = dataclasses.replace(
                cfg, vision_width=width, vision_layers=layers, embed_dim=embed, patch_size=patch
            )
            log({"step": 0, "shape": shape, **time_demo(shaped)})
        return
    if args.time_demo or args.timing_only:
        timing = time_demo(cfg)
        record.update(timing)
        print(f"demo ZegCLIP step: {timing}", flush=True)
    if args.timing_only:
        log({"step": 0})
        return

    # caption_for looks it up at call time; the probe swaps in another caption style on purpose.
    world_module.object_phrase = CAPTIONS[args.captions]  # type: ignore[assignment]
    eval_at = {int(s) for s in args.eval_at.split(",") if s}
    t0 = time.perf_counter()
    paused = [0.0]  # seconds spent measuring, left out of the pretraining wall time

    def on_step(step: int, model: CLIP) -> None:
        if step in eval_at and step < cfg.steps:
            t = time.perf_counter()
            log({"step": step, "pretrain_s": round(t - t0 - paused[0], 1), **measure(model, splits, world)})
            paused[0] += time.perf_counter() - t

    model, info = train_tiny_clip(world, cfg, progress=False, on_step=on_step)
    wall = time.perf_counter() - t0 - paused[0]
    model.eval()
    log({"step": cfg.steps, "pretrain_s": round(wall, 1), "loss_last_20": info["loss_last_20"],
         **measure(model, splits, world), **layer_probes(model, splits)})  # fmt: skip
    if args.save:
        torch.save(model.state_dict(), args.save)
    if not math.isfinite(info["loss_last_20"]):
        print("warning: the pretraining loss is not finite", flush=True)


if __name__ == "__main__":
    main()
