"""`otseg demo`: the miniature zero-shot benchmark, end to end, on a CPU.

Stages: generate the world (cached), pretrain the tiny CLIP on captions (cached), train ZegCLIP-style and OTSeg
models in the inductive, transductive and fully supervised settings with the regular `Trainer`, evaluate every
method with the regular `evaluate`, evaluate the control (OTSeg+ with the unseen classes' text replaced by random
unit vectors), print the table, and write `results.json`, `demo_info.json` and PNG panels to the output folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from otseg.demo.presets import (
    METHODS,
    SETTINGS,
    DemoRecipe,
    demo_data_config,
    demo_model_config,
    demo_train_config,
    training_arch,
    transductive_init_step,
)
from otseg.demo.pretrained import save_demo_model
from otseg.demo.tiny_clip import TinyClipConfig, tiny_clip_path
from otseg.demo.world import CLASS_NAMES, WorldConfig, seen_ids, unseen_ids, world_dir

__all__ = ["DemoSettings", "add_demo_parser", "cmd_demo", "format_table", "run_demo"]

METHOD_TITLES = {"zegclip": "ZegCLIP", "otseg": "OTSeg", "otseg+": "OTSeg+", "control": "control"}
NUM_PANELS = 4


@dataclass(frozen=True)
class DemoSettings:
    """Everything that sizes a demo run."""

    world: WorldConfig
    clip: TinyClipConfig
    recipe: DemoRecipe

    @classmethod
    def full(cls, seed: int = 0) -> DemoSettings:
        return cls(WorldConfig(seed=seed), TinyClipConfig(seed=seed), DemoRecipe())

    @classmethod
    def quick(cls, seed: int = 0) -> DemoSettings:
        """A smoke-test size (seconds): the same code paths, meaningless numbers."""
        return cls(
            WorldConfig(seed=seed, num_train=12, num_val=6, num_pretrain=64),
            TinyClipConfig(seed=seed, steps=2, batch_size=16),
            DemoRecipe(iters=4, batch_size=2, warmup_iters=1),
        )


# ---- helpers ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_tqdm(enabled: bool) -> Iterator[None]:
    """Silence the progress bars of the Trainer (which always shows one) when `enabled` is False.

    The Trainer imports `tqdm.auto.tqdm` when `train()` starts, so swapping that attribute for the duration is
    enough, and it is restored afterwards.
    """
    if enabled:
        yield
        return
    import tqdm.auto

    original = tqdm.auto.tqdm

    class _Silent(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    tqdm.auto.tqdm = _Silent
    try:
        yield
    finally:
        tqdm.auto.tqdm = original


def _split_miou(per_class: dict[str, float | None], ids: Sequence[int]) -> float | None:
    """Mean IoU over `ids`, leaving out classes absent from both ground truth and prediction (mmseg's rule)."""
    values = [per_class[CLASS_NAMES[i]] for i in ids]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else None


def _row(method: str, setting: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """One results row. mIoU(S)/(U) always use the world's 12/4 split, also for the fully supervised models
    (which treat every class as seen), as the paper's fully supervised rows do."""
    per_class = metrics["per_class_iou"]
    s = _split_miou(per_class, seen_ids())
    u = _split_miou(per_class, unseen_ids())
    h = None if s is None or u is None else (0.0 if s + u == 0 else 2 * s * u / (s + u))

    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {
        "method": method,
        "setting": setting,
        "miou_seen": rounded(s),
        "miou_unseen": rounded(u),
        "hiou": rounded(h),
    }


def format_table(rows: Sequence[dict[str, Any]], title: str = "") -> str:
    """The results as a Markdown table, in the paper's layout (method, setting, mIoU(S), mIoU(U), hIoU)."""

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [title] if title else []
    lines += ["| method | setting | mIoU(S) | mIoU(U) | hIoU |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {METHOD_TITLES.get(r['method'], r['method'])} | {r['setting']} | {cell(r['miou_seen'])} | "
            f"{cell(r['miou_unseen'])} | {cell(r['hiou'])} |"
        )
    return "\n".join(lines)


def _panel_indices(val_set: Any, count: int) -> list[int]:
    """The first `count` test images that contain an unseen class (the interesting ones), else the first ones."""
    unseen = set(unseen_ids())
    chosen = []
    for i in range(len(val_set)):
        label = val_set.load_label(i)
        if unseen & {int(v) for v in np.unique(label)}:
            chosen.append(i)
        if len(chosen) == count:
            return chosen
    rest = [i for i in range(len(val_set)) if i not in chosen]
    return (chosen + rest)[:count]


@torch.no_grad()
def _predict_labels(model: torch.nn.Module, val_set: Any, indices: Sequence[int]) -> list[np.ndarray]:
    out = []
    for i in indices:
        scores = model.predict_scores(val_set[i]["image"][None])
        out.append(scores.argmax(1)[0].numpy().astype(np.uint8))
    return out


def _write_panels(
    out_dir: Path, val_set: Any, indices: Sequence[int], predictions: dict[tuple[str, str], list[np.ndarray]]
) -> list[Path]:
    """One PNG per (setting, test image): image | ground truth | each method's prediction, with a legend.

    Predictions are shown on the scored pixels only: background is not a class (label 255), so what a model says
    there is not measured, and drawing it would hide the objects.
    """
    from otseg.viz import label_map_panel

    scale = 4  # 64 px images are too small to read
    paths = []
    panel_dir = out_dir / "panels"
    panel_dir.mkdir(parents=True, exist_ok=True)
    for setting in SETTINGS:
        methods = [m for m in (*METHODS, "control") if (m, setting) in predictions]
        if not methods:
            continue
        for j, i in enumerate(indices):
            image = val_set.load_image(i)
            gt = val_set.load_label(i)
            maps = [gt]
            for m in methods:
                pred = predictions[(m, setting)][j].copy()
                pred[gt == 255] = 255
                maps.append(pred)
            big = np.kron(image, np.ones((scale, scale, 1), np.uint8))
            big_maps = [np.kron(m, np.ones((scale, scale), np.uint8)) for m in maps]
            titles = ["image", "ground truth", *[f"{METHOD_TITLES[m]}" for m in methods]]
            panel = label_map_panel(big, big_maps, CLASS_NAMES, titles=titles)
            path = panel_dir / f"{setting}_{Path(val_set.samples[i][0]).stem}.png"
            panel.save(path)
            paths.append(path)
    # The legend marks unseen classes: a reader needs the split to read the pictures.
    split_note = "unseen classes: " + ", ".join(CLASS_NAMES[i] for i in unseen_ids())
    (panel_dir / "README.txt").write_text(
        "image | ground truth | predictions (background pixels are not scored and left black)\n" + split_note + "\n",
        encoding="utf-8",
    )
    return paths


# ---- the run ----------------------------------------------------------------------------------------------


def demo_datasets(cfg: DemoSettings, root: Path) -> tuple[Any, Any]:
    """The world's training set (the demo augmentation) and test set, through the regular custom-layout loader."""
    from otseg.data.datasets import build_custom
    from otseg.data.transforms import TestTransform, TrainTransform

    data_cfg = demo_data_config(demo_model_config("otseg", "inductive", cfg.world, cfg.clip))
    train_set = build_custom(root, "train", TrainTransform(data_cfg), seed=cfg.world.seed)
    val_set = build_custom(root, "val", TestTransform(data_cfg))
    return train_set, val_set


def train_demo_model(
    cfg: DemoSettings,
    method: str,
    setting: str,
    clip_state: dict[str, torch.Tensor],
    train_set: Any,
    work: Path,
    init_from: str | None = None,
    progress: bool = True,
    label: str = "",
) -> Any:
    """Build one demo model from the tiny CLIP and train it with the regular `Trainer` in `work` (fresh).

    Returns the trained `OTSeg` (its text tower attached, classes set to the world's 16).
    """
    from otseg.model.build import load_clip_into
    from otseg.model.segmentor import OTSeg
    from otseg.train.trainer import Trainer

    model_cfg = demo_model_config(method, setting, cfg.world, cfg.clip)  # type: ignore[arg-type]
    torch.manual_seed(cfg.world.seed)  # the head and prompt initialisation
    model = OTSeg(model_cfg)
    load_clip_into(model, clip_state)
    model.set_classes(CLASS_NAMES)
    train_cfg = demo_train_config(setting, cfg.recipe, seed=cfg.world.seed, init_from=init_from)  # type: ignore[arg-type]
    shutil.rmtree(work, ignore_errors=True)  # a fresh run, never a silent resume of an older one
    start = f"from the inductive {Path(init_from).stem}" if init_from else "from the CLIP weights"
    arch = training_arch(method)
    print(f"{label + ' ' if label else ''}train {arch} {setting}: {train_cfg.max_iters} iterations {start}", flush=True)
    with _quiet_tqdm(progress):
        Trainer(model, train_set, train_cfg, work).train()
    return model


def run_demo(
    out_dir: str | Path,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    settings: DemoSettings | None = None,
) -> list[dict[str, Any]]:
    """Run the miniature benchmark and return the results rows (also written to `out_dir/results.json`).

    Args:
        out_dir: receives results.json, demo_info.json (settings, timings, per-class IoU, CLIP diagnostics),
            table.md, panels/*.png and the training work folders (runs/<arch>-<setting>/).
        seed: seeds the world, the CLIP pretraining, every training run and the control's random vectors.
        quick: a seconds-long smoke run (tiny sizes, meaningless numbers).
        progress: progress bars (stage messages are printed either way).
        settings: explicit sizes (overrides `seed` and `quick`).
    """
    from otseg.eval.evaluate import evaluate
    from otseg.model.segmentor import OTSeg

    t_start = time.perf_counter()
    cfg = settings or (DemoSettings.quick(seed) if quick else DemoSettings.full(seed))
    seed = cfg.world.seed
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 2)

    print(f"otseg demo: miniature zero-shot benchmark, seed {seed}{' (quick)' if quick else ''}", flush=True)
    t0 = time.perf_counter()
    root = world_dir(cfg.world)
    stage("world", t0)
    print(f"[world] {root} ({timings['world']:.1f}s)", flush=True)

    t0 = time.perf_counter()
    clip_file = tiny_clip_path(cfg.world, cfg.clip, progress=progress)
    stage("tiny_clip", t0)
    clip_info_file = clip_file.with_suffix(".json")
    clip_info = json.loads(clip_info_file.read_text(encoding="utf-8")) if clip_info_file.is_file() else {}
    print(f"[tiny CLIP] {clip_file} ({timings['tiny_clip']:.1f}s)", flush=True)
    if "zero_shot" in clip_info:
        zs = clip_info["zero_shot"]
        print(
            f"[tiny CLIP] zero-shot single-object accuracy: seen {zs['accuracy_seen']:.1f}%, "
            f"unseen {zs['accuracy_unseen']:.1f}% (chance {100 / len(CLASS_NAMES):.1f}%)",
            flush=True,
        )

    from otseg.clip.loading import read_clip_state_dict

    clip_sd = read_clip_state_dict(clip_file)
    train_set, val_set = demo_datasets(cfg, root)
    panel_ids = _panel_indices(val_set, min(NUM_PANELS, len(val_set)))

    results: dict[tuple[str, str], dict[str, Any]] = {}
    per_class: dict[str, dict[str, Any]] = {}
    predictions: dict[tuple[str, str], list[np.ndarray]] = {}
    ckpts: dict[tuple[str, str], Path] = {}

    def score(model: OTSeg, method: str, setting: str) -> None:
        t_eval = time.perf_counter()
        metrics = evaluate(model, val_set, progress=progress)
        stage(f"eval {method} {setting}", t_eval)
        results[(method, setting)] = _row(method, setting, metrics)
        per_class[f"{method} {setting}"] = metrics["per_class_iou"]
        predictions[(method, setting)] = _predict_labels(model, val_set, panel_ids)
        r = results[(method, setting)]
        print(
            f"  {METHOD_TITLES[method]:<8} {setting:<12} mIoU(S) {r['miou_seen']}  mIoU(U) {r['miou_unseen']}  "
            f"hIoU {r['hiou']}",
            flush=True,
        )

    runs = [(arch, setting) for arch in ("zegclip", "otseg") for setting in SETTINGS]
    for n, (arch, setting) in enumerate(runs, 1):
        methods = [m for m in METHODS if training_arch(m) == arch]
        init_from = str(ckpts[(arch, "inductive")]) if setting == "transductive" else None
        t0 = time.perf_counter()
        model = train_demo_model(
            cfg, methods[-1], setting, clip_sd, train_set, out / "runs" / f"{arch}-{setting}", init_from, progress,
            label=f"[{n}/{len(runs)}]",
        )  # fmt: skip
        stage(f"train {arch} {setting}", t0)
        work = out / "runs" / f"{arch}-{setting}"
        if setting == "inductive":
            ckpts[(arch, setting)] = work / f"iter_{transductive_init_step(cfg.recipe)}.pt"
        for method in methods:
            model.head.cfg.ensemble_weight = 0.5 if method == "otseg+" else 1.0
            score(model, method, setting)
        if arch == "otseg" and setting == "inductive":
            # The model behind Predictor.from_pretrained("demo") / `otseg segment --model demo` (OTSeg+ inductive).
            model.head.cfg.ensemble_weight = 0.5
            save_demo_model(model, cfg)
            # The control: OTSeg+ with the unseen classes' text replaced by random unit vectors, which carry no
            # knowledge of those classes; the seen classes and the seen-class bias are unchanged.
            model.head.cfg.ensemble_weight = 0.5
            emb = model.class_embeddings.clone()
            gen = torch.Generator().manual_seed(seed)
            unseen = list(unseen_ids())
            emb[unseen] = F.normalize(torch.randn(len(unseen), *emb.shape[1:], generator=gen), dim=-1)
            model.set_class_embeddings(emb, CLASS_NAMES, seen=seen_ids())
            score(model, "control", "inductive")

    rows = [results[(m, s)] for s in SETTINGS for m in METHODS]
    rows.insert(len(METHODS), results[("control", "inductive")])
    t0 = time.perf_counter()
    panels = _write_panels(out, val_set, panel_ids, predictions)
    stage("panels", t0)
    timings["total"] = round(time.perf_counter() - t_start, 2)

    title = (
        f"Miniature zero-shot benchmark, seed {seed}: {len(CLASS_NAMES)} classes ({len(seen_ids())} seen / "
        f"{len(unseen_ids())} unseen), {len(val_set)} test images; mIoU in %"
    )
    table = format_table(rows, title)
    print()
    print(table)
    ind = {r["method"]: r for r in rows if r["setting"] == "inductive"}
    gap = None
    if ind["otseg+"]["miou_unseen"] is not None and ind["control"]["miou_unseen"] is not None:
        gap = round(ind["otseg+"]["miou_unseen"] - ind["control"]["miou_unseen"], 2)
        print(f"\nOTSeg+ inductive mIoU(U) minus the control's: {gap:+.1f} points (the text encoder's knowledge)")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    info = {
        "seed": seed,
        "quick": quick,
        "settings": {"world": cfg.world.to_dict(), "clip": asdict(cfg.clip), "recipe": asdict(cfg.recipe)},
        "world_dir": str(root),
        "tiny_clip": str(clip_file),
        "tiny_clip_info": clip_info,
        "classes": list(CLASS_NAMES),
        "unseen": [CLASS_NAMES[i] for i in unseen_ids()],
        "control_gap_unseen": gap,
        "timings_s": timings,
        "per_class_iou": per_class,
        "panels": [str(p) for p in panels],
        "torch_threads": torch.get_num_threads(),
    }
    (out / "demo_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(
        f"\nwrote {out / 'results.json'}, {out / 'table.md'}, {out / 'demo_info.json'} and {len(panels)} panels in "
        f"{out / 'panels'}; total {timings['total']:.0f}s",
        flush=True,
    )
    return rows


# ---- command line -----------------------------------------------------------------------------------------


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `otseg demo` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "demo",
        help="run the miniature zero-shot benchmark end to end on the CPU (no downloads)",
        description="Generate a miniature zero-shot segmentation world, pretrain a tiny CLIP on its captions, train "
        "ZegCLIP-style and OTSeg models (inductive, transductive, fully supervised), evaluate them and a control, "
        "print the table and write results.json and pictures. About 12 minutes on 2 CPU cores; the world and the "
        "tiny CLIP are cached for later runs.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the world, the CLIP and every run (default: 0)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run with meaningless numbers")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice, one per core); use 1 on a machine busy with other work, "
        "where threads that wait for each other slow the small matrix products down many times",
    )
    p.set_defaults(func=cmd_demo)
    return p


def cmd_demo(args: argparse.Namespace) -> int:
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    run_demo(args.out, seed=args.seed, quick=args.quick, progress=not args.no_progress)
    return 0
