"""Command-line interface: `otseg <command> --help` for each command.

Bad input ends in a one-line message and a non-zero exit status, never a traceback (set OTSEG_DEBUG=1 to see
one).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _parse_overrides(items: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value (e.g. head.use_mps=false), got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


# ------------------------------------------------------------------------------------------------ presets
def cmd_presets(args: argparse.Namespace) -> int:
    from otseg.model.presets import describe_preset, list_presets

    if args.name:
        print(describe_preset(args.name))
        return 0
    for name in list_presets():
        print(name)
    return 0


# ------------------------------------------------------------------------------------------------ params
def read_reference_key_table(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of the reference key table (`official_state_dict_voc.tsv`): key, shape, dtype, kind, trainable, numel."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"reference key table {p} does not exist")
    lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    header = lines[0].split("\t")
    if header[:2] != ["key", "shape"]:
        raise ValueError(f"{p}: expected a TSV whose header starts with 'key<TAB>shape', got {header[:3]}")
    return [dict(zip(header, ln.split("\t"), strict=False)) for ln in lines[1:]]


def cmd_params(args: argparse.Namespace) -> int:
    import otseg
    from otseg.model.checkpoint import map_reference_key

    model = otseg.build_model(args.preset, **_parse_overrides(args.set))
    groups = {"backbone (frozen CLIP)": 0, "backbone (VPT prompts)": 0, "head": 0}
    for name, p in model.named_parameters():
        if name.startswith("head."):
            groups["head"] += p.numel()
        elif p.requires_grad:
            groups["backbone (VPT prompts)"] += p.numel()
        else:
            groups["backbone (frozen CLIP)"] += p.numel()
    trainable, total = model.num_parameters(trainable_only=True), model.num_parameters()
    print(f"preset {args.preset}")
    for name, n in groups.items():
        print(f"  {name:<24} {n:>14,}")
    print(f"  {'total':<24} {total:>14,}   (the CLIP text tower, 63.4 M frozen, is not part of the segmentor)")
    print(f"  {'trainable':<24} {trainable:>14,}")
    if args.reference_keys:
        rows = read_reference_key_table(args.reference_keys)
        ref_trainable = sum(int(r["numel"]) for r in rows if r["trainable"] == "1")
        dropped_trainable = 0
        ours = model.state_dict()
        print(f"\nreference keys in {args.reference_keys}: {len(rows)}")
        reasons: dict[str, list[int]] = {}
        unmatched = []
        for r in rows:
            new_key, reason = map_reference_key(r["key"])
            if new_key is None:
                reasons.setdefault(reason, [0, 0])
                reasons[reason][0] += 1
                reasons[reason][1] += int(r["numel"])
                if r["trainable"] == "1":
                    dropped_trainable += int(r["numel"])
            elif new_key not in ours or "x".join(map(str, ours[new_key].shape)) != r["shape"]:
                unmatched.append(r["key"])
        mapped = len(rows) - sum(n for n, _ in reasons.values())
        print(f"  mapped: {mapped} keys")
        for reason, (n, numel) in reasons.items():
            print(f"  dropped: {n} keys ({numel:,} values): {reason}")
        print(f"  reference trainable:              {ref_trainable:>14,}")
        print(f"  minus dropped never-used trainable: {dropped_trainable:>12,}")
        print(f"  = expected trainable:             {ref_trainable - dropped_trainable:>14,}")
        print(f"  ours:                             {trainable:>14,}")
        if unmatched:
            print(f"  {len(unmatched)} mapped key(s) have no matching parameter/shape here: {unmatched[:5]}")
            return 1
        if ref_trainable - dropped_trainable != trainable:
            print("  MISMATCH between the expected and our trainable parameter count")
            return 1
        print("  every reference key is mapped or dropped by name; trainable counts agree")
    return 0


# ------------------------------------------------------------------------------------------------ convert
def cmd_convert(args: argparse.Namespace) -> int:
    import otseg
    from otseg.model.checkpoint import load_reference_checkpoint, read_reference_state_dict, save_pretrained

    model = otseg.build_model(args.preset, **_parse_overrides(args.set))
    if args.clip:
        from otseg.model.build import load_clip_into

        load_clip_into(model, args.clip)
    elif args.keep_text_encoder:
        from otseg.clip.text import TextEncoder

        ref_sd, _ = read_reference_state_dict(args.checkpoint, allow_pickle=args.allow_pickle)
        if not any(k.startswith("text_encoder.") for k in ref_sd):
            raise ValueError(f"{args.checkpoint} holds no text_encoder.* weights to keep")
        model.attach_text_encoder(TextEncoder(model.config.text))
    report = load_reference_checkpoint(model, args.checkpoint, allow_pickle=args.allow_pickle)
    print(report.summary())
    if args.embeddings:
        model.set_class_embeddings(otseg.load_class_embeddings(args.embeddings))
        print(f"class embeddings from {args.embeddings}: {tuple(model.class_embeddings.shape)}")
    else:
        print("no --embeddings given: the converted model needs set_class_embeddings()/set_classes() before use")
    out = save_pretrained(model, args.out, extra={"converted_from": str(args.checkpoint)})
    print(f"wrote {out / 'model.safetensors'} and {out / 'config.json'}")
    return 0


# ------------------------------------------------------------------------------------------------ train / eval
def _split_overrides(items: Sequence[str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """--set entries: "train.KEY=VALUE" go to the TrainConfig, the rest to the model config."""
    model_over, train_over = {}, {}
    for key, value in _parse_overrides(items).items():
        if key.startswith("train."):
            train_over[key[len("train.") :]] = value
        else:
            model_over[key] = value
    return model_over, train_over


def _class_embeddings_for(model, args: argparse.Namespace) -> None:
    import otseg

    if getattr(args, "embeddings", None):
        model.set_class_embeddings(otseg.load_class_embeddings(args.embeddings))
    elif model.text_encoder is not None:
        model.set_classes(model.class_names)
    elif not model.has_class_embeddings:
        raise ValueError(
            "no class text embeddings: pass --clip ViT-B-16.pt (embeds the class names live) or --embeddings "
            "FILE.npy (e.g. the reference's voc12_otseg.npy)"
        )


def _custom_dataset_overrides(args: argparse.Namespace) -> dict:
    """With --dataset custom, the classes and the seen/unseen split come from the folder's classes.txt and
    split.json, not from the preset (whose architecture and recipe are kept)."""
    if getattr(args, "dataset", None) != "custom":
        return {}
    from otseg.data.datasets import read_custom_classes

    classes = read_custom_classes(args.data_root)
    setting = None
    if not classes.unseen:
        setting = "fully"  # no unseen classes: nothing to hold out, every class is seen
    over = {"dataset": "custom", "class_names": classes.class_names, "unseen_classes": classes.unseen}
    if setting:
        over["setting"] = setting
    print(f"custom dataset: {classes.num_classes} classes ({len(classes.unseen)} unseen) from {args.data_root}")
    return over


def _dataset_name(args: argparse.Namespace, model_cfg) -> str:
    return args.dataset or model_cfg.dataset


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    import otseg
    from otseg.data.config import data_config_for
    from otseg.data.datasets import build_dataset
    from otseg.data.transforms import TestTransform, TrainTransform
    from otseg.eval.evaluate import evaluate
    from otseg.model.config import _coerce
    from otseg.train.distributed import init_distributed, shutdown
    from otseg.train.trainer import TrainConfig, Trainer, _seed_everything, default_train_config

    model_over, train_over = _split_overrides(args.set)
    model_over.update(_custom_dataset_overrides(args))
    # The trainable weights (VPT prompts, head) are drawn at build time and torch's default seed differs per
    # process: seed first (the same on every rank), so that a run is reproducible from --seed.
    seed = args.seed if args.seed is not None else _coerce(train_over.get("seed", "0"), 0, "train.seed")
    _seed_everything(seed)
    model = otseg.build_model(args.preset, **model_over)
    if args.clip:
        from otseg.model.build import load_clip_into

        load_clip_into(model, args.clip)
    elif not args.random_init:
        raise ValueError(
            "training needs the OpenAI CLIP weights for the frozen image tower: pass --clip ViT-B-16.pt "
            "(or --random-init for a smoke test with random weights)"
        )
    _class_embeddings_for(model, args)

    tcfg = default_train_config(model.config)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in train_over.items():
        if key not in fields:
            raise ValueError(f"unknown training setting train.{key}; valid: {sorted(fields)}")
        setattr(tcfg, key, _coerce(value, getattr(tcfg, key), f"train.{key}"))
    for name in ("max_iters", "batch_size", "amp", "seed", "num_workers", "eval_interval", "init_from", "device"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(tcfg, name, value)
    tcfg.deterministic = tcfg.deterministic or args.deterministic
    tcfg.tensorboard = tcfg.tensorboard or args.tensorboard

    dist_info = init_distributed(tcfg.device)
    trainer = None
    try:
        data_cfg = data_config_for(model.config)
        name = _dataset_name(args, model.config)
        train_set = build_dataset(name, args.data_root, "train", TrainTransform(data_cfg))
        val_set = build_dataset(name, args.data_root, "val", TestTransform(data_cfg))
        if dist_info.is_main:
            print(f"train: {len(train_set)} images, val: {len(val_set)} images ({name} at {args.data_root})")
            print(
                f"{model.num_parameters(trainable_only=True):,} trainable parameters; {dist_info.world_size} "
                f"process(es) x batch {tcfg.batch_size} x accumulation {tcfg.grad_accum}"
            )

        def run_eval(m):
            return evaluate(m, val_set, dist_info=dist_info, limit=args.eval_limit)

        trainer = Trainer(model, train_set, tcfg, args.work_dir, evaluate=run_eval, dist_info=dist_info)
        result = trainer.train(resume=args.resume)
        if dist_info.is_main and result["eval"]:
            from otseg.eval.metrics import format_markdown
            from otseg.eval.score import write_results

            write_results(result["eval"], Path(args.work_dir) / "eval.json", title=args.preset)
            print(format_markdown(result["eval"], title=f"{args.preset} after {result['step']} iterations"))
    finally:
        trainer = None  # frees its DistributedDataParallel wrapper before shutdown() destroys the process group
        shutdown()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from otseg.data.config import data_config_for
    from otseg.data.datasets import build_dataset
    from otseg.data.transforms import TestTransform
    from otseg.eval.evaluate import evaluate
    from otseg.eval.metrics import format_markdown
    from otseg.eval.score import write_results
    from otseg.model.loading import load_model
    from otseg.train.distributed import init_distributed, shutdown

    model_over, _ = _split_overrides(args.set)
    model_over.update(_custom_dataset_overrides(args))
    model = load_model(args.checkpoint, preset=args.preset, overrides=model_over, allow_pickle=args.allow_pickle)
    if args.clip:
        from otseg.model.build import load_clip_into

        load_clip_into(model, args.clip)
    if args.embeddings or not model.has_class_embeddings:
        _class_embeddings_for(model, args)
    dist_info = init_distributed(args.device)
    try:
        model.to(dist_info.device)
        data_cfg = data_config_for(model.config)
        name = _dataset_name(args, model.config)
        val_set = build_dataset(name, args.data_root, "val", TestTransform(data_cfg))
        metrics = evaluate(
            model, val_set, dist_info=dist_info, limit=args.limit, save_predictions=args.save_predictions
        )
        if dist_info.is_main:
            out = Path(args.out)
            json_path, md_path = write_results(
                metrics, out, title=f"{args.preset or model.config.name}: {args.checkpoint}"
            )
            print(format_markdown(metrics, title=model.config.name))
            print(f"wrote {json_path} and {md_path}")
    finally:
        shutdown()
    return 0


# ------------------------------------------------------------------------------------------------ score
def cmd_score(args: argparse.Namespace) -> int:
    from otseg.eval.metrics import format_markdown
    from otseg.eval.score import score_folders, write_results
    from otseg.model.presets import get_preset

    cfg = get_preset(args.preset)
    metrics = score_folders(
        args.pred, args.gt, cfg.class_names, cfg.seen_classes, cfg.unseen_classes,
        reduce_zero_label=args.reduce_zero_label,
    )  # fmt: skip
    json_path, md_path = write_results(metrics, args.out, title=f"{args.preset}: {args.pred}")
    print(format_markdown(metrics, title=args.preset))
    print(f"wrote {json_path} and {md_path}")
    return 0


# ------------------------------------------------------------------------------------------------ demo
def _synthetic_image(height: int, width: int, seed: int):
    """A generated RGB picture (sky, ground, a few shapes) as a uint8 numpy array (H, W, 3)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    horizon = height * 0.55
    sky = y < horizon
    img[sky] = np.stack([90 + 60 * y / horizon, 140 + 60 * y / horizon, 235 - 20 * y / horizon], -1)[sky]
    img[~sky] = np.array([70, 130, 60]) + rng.normal(0, 12, (int((~sky).sum()), 3))
    for _ in range(4):
        cy, cx = rng.uniform(0.3, 0.9) * height, rng.uniform(0.1, 0.9) * width
        r = rng.uniform(0.06, 0.15) * min(height, width)
        mask = (y - cy) ** 2 + (x - cx) ** 2 < r**2
        img[mask] = rng.uniform(20, 235, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    import otseg
    from otseg.ops import record_sinkhorn_calls
    from otseg.viz import label_map_panel

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        "otseg demo: runs the full OTSeg pipeline (VPT CLIP ViT-B/16, MPS path, MPSA decoder, OTSeg+ ensemble,\n"
        "sliding window) on a GENERATED image with RANDOM weights and random class embeddings: no CLIP weights\n"
        "or datasets can be downloaded here, so the labels below are meaningless. It shows that the model runs\n"
        "end to end and what it costs. With real weights: otseg convert / build_model(..., clip=...)."
    )
    t0 = time.perf_counter()
    model = otseg.build_model(args.preset, **_parse_overrides(args.set)).eval()
    cfg = model.config
    k, n, d = cfg.num_classes, cfg.num_prompts, cfg.head.embed_dim
    model.set_class_embeddings(torch.nn.functional.normalize(torch.randn(k, n, d), dim=-1))
    print(
        f"built {args.preset} in {time.perf_counter() - t0:.1f}s: {model.num_parameters():,} parameters, "
        f"{model.num_parameters(trainable_only=True):,} trainable; {k} classes x {n} prompts"
    )

    h, w = args.height, args.width
    rgb = _synthetic_image(h, w, args.seed)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    images = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() - mean) / std
    t0 = time.perf_counter()
    with record_sinkhorn_calls() as calls:
        scores = model.predict_scores(images)
    elapsed = time.perf_counter() - t0
    labels = scores.argmax(dim=1)[0].numpy().astype(np.uint8)
    crops = len(calls) // max(1, (cfg.head.num_layers + int(cfg.head.use_mps)))
    print(
        f"predicted a {h}x{w} image in {elapsed:.1f}s ({crops} sliding-window crop(s) of {cfg.crop_size}, "
        f"stride {cfg.stride}); scores {tuple(scores.shape)}"
    )
    print(f"Sinkhorn calls: {len(calls)}, iterations per call: {[c.iterations for c in calls]}")
    present, counts = np.unique(labels, return_counts=True)
    top = sorted(zip(counts, present, strict=True), reverse=True)[:5]
    print(
        "largest predicted classes: "
        + ", ".join(f"{model.class_names[c]} {100 * n / labels.size:.1f}%" for n, c in top)
    )
    Image.fromarray(rgb).save(out_dir / "image.png")
    label_map_panel(rgb, labels, model.class_names).save(out_dir / "prediction.png")
    print(f"wrote {out_dir / 'image.png'} and {out_dir / 'prediction.png'} (image | label map, with a legend)")
    return 0


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otseg",
        description="OTSeg zero-shot semantic segmentation (Multi-Prompt Sinkhorn on CLIP ViT-B/16).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the full model on a generated image (random weights) and save a picture")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--preset", default="voc12-inductive", help="model preset (default: voc12-inductive)")
    p.add_argument("--height", type=int, default=512, help="generated image height (default: 512)")
    p.add_argument("--width", type=int, default=683, help="generated image width (default: 683)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. head.use_mps=false")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "train",
        help="train on VOC 2012 / PASCAL Context-59 / COCO-Stuff-164K / your own data (torchrun for several processes)",
        description="Train OTSeg in the preset's setting (inductive, transductive or fully supervised). "
        "Several processes: torchrun --nproc_per_node=N -m otseg train ... (the batch size is per process; "
        "the reference used 4 images x 4 GPUs = 16 at lr 2e-4: scale the lr linearly with the global batch).",
    )
    p.add_argument("--preset", required=True, help="e.g. voc12-inductive (otseg presets lists them)")
    p.add_argument("--data-root", required=True, help="folder holding the dataset in mmsegmentation's layout")
    p.add_argument("--work-dir", required=True, help="checkpoints, metrics.jsonl, eval.json go here")
    p.add_argument("--clip", help="OpenAI CLIP weights, e.g. ViT-B-16.pt (image tower + live class embeddings)")
    p.add_argument("--embeddings", help="class embeddings file instead of live text (e.g. voc12_otseg.npy)")
    p.add_argument("--dataset", help="dataset layout if not the preset's: voc12, context59, coco_stuff164k, custom")
    p.add_argument("--resume", help="'auto' (latest checkpoint in --work-dir) or a checkpoint path")
    p.add_argument("--init-from", dest="init_from", help="start from these weights (transductive: the inductive run)")
    p.add_argument("--max-iters", dest="max_iters", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int, help="images per process (default 4)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], help="autocast dtype (Sinkhorn stays float32)")
    p.add_argument("--eval-interval", dest="eval_interval", type=int, help="evaluate every N iterations")
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N validation images only")
    p.add_argument("--num-workers", dest="num_workers", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (needs tensorboard)")
    p.add_argument("--random-init", action="store_true", help="allow training without CLIP weights (smoke tests)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="config override: model keys (head.use_mps=false) or train.KEY (train.lr=1e-4)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint with the zero-shot protocol: mIoU(S), mIoU(U), hIoU")
    p.add_argument("--preset", help="needed for reference .pth checkpoints (our formats carry their config)")
    p.add_argument("--data-root", required=True)
    p.add_argument("--checkpoint", required=True, help="otseg folder, iter_N.pt from otseg train, or reference .pth")
    p.add_argument("--embeddings", help="class embeddings file (e.g. voc12_otseg.npy)")
    p.add_argument("--clip", help="OpenAI CLIP weights to embed the class names live")
    p.add_argument("--dataset", help="dataset layout if not the preset's")
    p.add_argument("--out", default="eval.json", help="results JSON (Markdown beside it)")
    p.add_argument("--limit", type=int, help="first N images only")
    p.add_argument("--save-predictions", help="folder for predicted label-map PNGs")
    p.add_argument("--device")
    p.add_argument("--allow-pickle", action="store_true", help="load with pickle (trusted files only)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "score",
        help="score folders of label-map PNGs: mIoU(S), mIoU(U), hIoU, per-class IoU",
        description="Score predicted label maps against ground truth. Both folders hold PNGs with the same file "
        "stems; values are class indices 0..K-1 in the preset's class order, 255 = ignore.",
    )
    p.add_argument("--preset", required=True, help="gives the class names and the seen/unseen split")
    p.add_argument("--pred", required=True, help="folder of predicted label maps (*.png)")
    p.add_argument("--gt", required=True, help="folder of ground-truth label maps (*.png)")
    p.add_argument("--out", required=True, help="results JSON (a Markdown table is written beside it)")
    p.add_argument(
        "--reduce-zero-label",
        action="store_true",
        help="ground truth is raw VOC/Context (0 = background -> ignore, c -> c-1), as the datasets store it",
    )
    p.set_defaults(func=cmd_score)

    from otseg.benchmark import add_bench_parser

    add_bench_parser(sub)

    p = sub.add_parser("presets", help="list the model presets, or describe one")
    p.add_argument("name", nargs="?", help="a preset to describe")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("params", help="parameter counts of a preset (and a check against the reference key table)")
    p.add_argument("--preset", default="voc12-inductive")
    p.add_argument("--reference-keys", metavar="TSV", help="the reference key table, e.g. official_state_dict_voc.tsv")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser(
        "convert",
        help="convert a reference release checkpoint (.pth) to otseg's format (safetensors + config.json)",
    )
    p.add_argument("checkpoint", help="reference checkpoint, e.g. voc_inductive.pth")
    p.add_argument("--preset", required=True, help="the preset the checkpoint was trained with")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--embeddings", help="class embeddings to store with the model (e.g. voc12_otseg.npy)")
    p.add_argument("--clip", help="OpenAI CLIP weights (ViT-B-16.pt) to attach the text tower for live class names")
    p.add_argument("--keep-text-encoder", action="store_true", help="keep the checkpoint's text_encoder.* weights")
    p.add_argument("--allow-pickle", action="store_true", help="load with pickle (only for files you trust)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, OSError, FloatingPointError) as e:
        if os.environ.get("OTSEG_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"otseg {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"otseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
