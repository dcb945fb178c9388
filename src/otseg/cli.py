"""Command-line interface: `otseg <command> --help` for each command.

Bad input ends in a one-line message and a non-zero exit status, never a traceback (set OTSEG_DEBUG=1 to see
one).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import otseg
from otseg.benchmark import add_bench_parser
from otseg.clip.text import TextEncoder
from otseg.config import TrainConfig
from otseg.data.check import check_dataset, check_preset, require_usable
from otseg.data.datasets import build_dataset, read_custom_classes
from otseg.data.facts import DATASET_ALIASES, data_config_for, default_train_config, list_datasets
from otseg.data.transforms import TestTransform, TrainTransform
from otseg.demo.run import add_demo_parser
from otseg.distributed import init_distributed, shutdown
from otseg.eval.evaluate import evaluate, throughput_line
from otseg.eval.metrics import format_markdown
from otseg.eval.score import score_folders, write_results
from otseg.export import add_export_parser
from otseg.formats.otseg_folder import save_pretrained
from otseg.formats.reference_pth import load_reference_checkpoint, map_reference_key, read_reference_state_dict
from otseg.model.build import load_clip_into
from otseg.model.presets import describe_preset, get_preset, list_presets
from otseg.model_arguments import add_model_arguments, predictor_from_args
from otseg.predictor import default_class_names
from otseg.prepare import add_prepare_parser
from otseg.segment import parse_class_list, segment_images
from otseg.train.preflight import batch_note, require_transductive_init, warmup_warning
from otseg.train.trainer import Trainer, _seed_everything
from otseg.validation import coerce_text as _coerce
from otseg.web import add_serve_parser
from otseg.weights.commands import add_weights_parser

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

    model = otseg.build_model(args.preset, **_parse_overrides(args.set))
    if args.clip:
        load_clip_into(model, args.clip)
    elif args.keep_text_encoder:
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

    model_over, train_over = _split_overrides(args.set)
    model_over.update(_custom_dataset_overrides(args))
    # The trainable weights (VPT prompts, head) are drawn at build time and torch's default seed differs per
    # process: seed first (the same on every rank), so that a run is reproducible from --seed.
    seed = args.seed if args.seed is not None else _coerce(train_over.get("seed", "0"), 0, "train.seed")
    _seed_everything(seed)
    model = otseg.build_model(args.preset, **model_over)
    if args.clip:
        load_clip_into(model, args.clip)
    elif not args.random_init:
        raise ValueError(
            "training needs the OpenAI CLIP weights for the frozen image tower: pass --clip ViT-B-16.pt "
            "(or --random-init for a smoke test with random weights)"
        )
    _class_embeddings_for(model, args)
    if model.num_classes != model.config.num_classes:  # checked before training starts, not at its first step
        raise ValueError(
            f"--embeddings {args.embeddings}: {model.num_classes} rows (classes), but the run has "
            f"{model.config.num_classes} classes ({args.preset}{', ' + args.data_root if args.dataset else ''}); "
            "give the embeddings of exactly these classes, in their order, or --clip to embed the names"
        )

    tcfg = default_train_config(model.config)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in train_over.items():
        if key not in fields:
            raise ValueError(f"unknown training setting train.{key}; valid: {sorted(fields)}")
        setattr(tcfg, key, _coerce(value, getattr(tcfg, key), f"train.{key}"))
    for name in (
        "max_iters", "batch_size", "amp", "seed", "num_workers", "eval_interval", "init_from", "device", "bad_samples",
    ):  # fmt: skip
        given = getattr(args, name, None)
        if given is not None:
            setattr(tcfg, name, given)
    tcfg.deterministic = tcfg.deterministic or args.deterministic
    tcfg.tensorboard = tcfg.tensorboard or args.tensorboard
    tcfg = dataclasses.replace(tcfg)  # validated as built: --set train.lr=-1 or --max-iters 0 is one clear error
    resuming = args.resume not in (None, "auto") or (Path(args.work_dir) / "last_checkpoint").is_file()
    require_transductive_init(args.preset, model.config.setting, model.config.dataset, tcfg, resuming)

    dist_info = init_distributed(tcfg.device)
    trainer = None
    try:
        data_cfg = data_config_for(model.config)
        name = _dataset_name(args, model.config)
        require_usable(name, args.data_root, ("train", "val"), verbose=dist_info.is_main)
        if dist_info.is_main:
            for note in (warmup_warning(tcfg), batch_note(tcfg, dist_info.world_size)):
                if note:
                    print(note)
        train_set = build_dataset(name, args.data_root, "train", TrainTransform(data_cfg))
        val_set = build_dataset(name, args.data_root, "val", TestTransform(data_cfg))
        if dist_info.is_main:
            print(f"train: {len(train_set)} images, val: {len(val_set)} images ({name} at {args.data_root})")
            print(
                f"{model.num_parameters(trainable_only=True):,} trainable parameters; {dist_info.world_size} "
                f"process(es) x batch {tcfg.batch_size} x accumulation {tcfg.grad_accum}"
            )

        def run_eval(m):
            return evaluate(m, val_set, dist_info=dist_info, limit=args.eval_limit, skip_bad=tcfg.bad_samples == "skip")

        trainer = Trainer(model, train_set, tcfg, args.work_dir, evaluate=run_eval, dist_info=dist_info)
        result = trainer.train(resume=args.resume)
        if dist_info.is_main and result["eval"]:
            write_results(result["eval"], Path(args.work_dir) / "eval.json", title=args.preset)
            print(format_markdown(result["eval"], title=f"{args.preset} after {result['step']} iterations"))
    finally:
        trainer = None  # frees its DistributedDataParallel wrapper before shutdown() destroys the process group
        shutdown()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    model_over, _ = _split_overrides(args.set)
    model_over.update(_custom_dataset_overrides(args))
    model = predictor_from_args(args, overrides=model_over).model
    if args.embeddings or not model.has_class_embeddings:
        _class_embeddings_for(model, args)
    dist_info = init_distributed(args.device)
    try:
        model.to(dist_info.device)
        data_cfg = data_config_for(model.config)
        name = _dataset_name(args, model.config)
        require_usable(name, args.data_root, ("val",), verbose=dist_info.is_main)
        val_set = build_dataset(name, args.data_root, "val", TestTransform(data_cfg))
        if model.num_classes != val_set.num_classes:
            raise ValueError(
                f"the model from {args.checkpoint} scores {model.num_classes} classes but the {name} dataset has "
                f"{val_set.num_classes}: give --embeddings with one row per dataset class, or --clip to embed the "
                "dataset's class names"
            )
        start = time.perf_counter()
        metrics = evaluate(
            model, val_set, dist_info=dist_info, limit=args.limit, save_predictions=args.save_predictions,
            precision=args.precision,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        if dist_info.is_main:
            out = Path(args.out)
            json_path, md_path = write_results(
                metrics, out, title=f"{args.preset or model.config.name}: {args.checkpoint}"
            )
            print(format_markdown(metrics, title=model.config.name))
            print(f"wrote {json_path} and {md_path}")
            print(throughput_line(metrics["num_images"], seconds, args.precision, dist_info))
    finally:
        shutdown()
    return 0


# ------------------------------------------------------------------------------------------------ score
def cmd_score(args: argparse.Namespace) -> int:

    cfg = get_preset(args.preset)
    metrics = score_folders(
        args.pred, args.gt, cfg.class_names, cfg.seen_classes, cfg.unseen_classes,
        reduce_zero_label=args.reduce_zero_label,
    )  # fmt: skip
    json_path, md_path = write_results(metrics, args.out, title=f"{args.preset}: {args.pred}")
    print(format_markdown(metrics, title=args.preset))
    print(f"wrote {json_path} and {md_path}")
    return 0


# ------------------------------------------------------------------------------------------------ segment
def cmd_segment(args: argparse.Namespace) -> int:

    names = parse_class_list(args.classes) if args.classes else None
    predictor = predictor_from_args(args)
    if names is None:
        print(f"classes (the model's own, --classes to change): {', '.join(predictor.default_class_names)}")
    summary = segment_images(predictor, args.images, args.out, class_names=names, progress=not args.no_progress)
    done, failed = len(summary["images"]), len(summary["failed"])
    print(f"wrote label maps, overlays and class fractions of {done} image(s) to {args.out} (summary.json)")
    if failed:
        print(f"otseg segment: {failed} image(s) could not be read (listed above and in summary.json)", file=sys.stderr)
        return 1
    return 0


def cmd_classes(args: argparse.Namespace) -> int:

    model = args.model
    if model is None:
        model = args.preset or "demo"  # --preset alone: that preset's classes
    elif args.preset and (model == "demo" or model in list_presets() or Path(model).is_dir()):
        print(f"otseg classes: --preset {args.preset} is ignored: {model} names its own classes", file=sys.stderr)
    for name in default_class_names(model, preset=args.preset):
        print(name)
    return 0


# ------------------------------------------------------------------------------------------------ check-data
def cmd_check_data(args: argparse.Namespace) -> int:
    if args.preset:
        check = check_preset(get_preset(args.preset), args.data_root, sample=args.sample)
    elif not args.dataset:
        raise ValueError("otseg check-data needs --preset NAME (e.g. voc12-inductive) or --dataset NAME")
    else:
        dataset = DATASET_ALIASES.get(args.dataset, args.dataset)
        if dataset not in list_datasets():
            raise ValueError(f"--dataset {args.dataset!r}: valid: {', '.join(list_datasets())}")
        check = check_dataset(dataset, args.data_root, sample=args.sample)
    print(check.report())
    return 0 if check.usable else 1


def _add_check_data_parser(sub: argparse._SubParsersAction) -> None:
    """Register `otseg check-data`."""
    p = sub.add_parser(
        "check-data",
        help="check the dataset a preset reads: folders, lists, image/label pairing, label values, counts",
        description="Check the dataset layout a preset reads. Exit 0 when it is usable (counts that differ from "
        "the official ones are warnings); otherwise each problem is printed on one line with its fix, exit 1.",
    )
    p.add_argument("--preset", help="e.g. voc12-inductive (otseg presets lists them)")
    p.add_argument("--dataset", help="instead of --preset: voc12, context59, coco_stuff164k or ade20k")
    p.add_argument("--data-root", required=True, help="the --data-root given to otseg prepare / train / eval")
    p.add_argument("--sample", type=int, default=6, help="label maps read per split (default 6)")
    p.set_defaults(func=cmd_check_data)


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otseg",
        description="OTSeg zero-shot semantic segmentation (Multi-Prompt Sinkhorn on CLIP ViT-B/16).",
    )
    parser.add_argument("--version", action="version", version=f"otseg {otseg.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_demo_parser(sub)

    p = sub.add_parser(
        "segment",
        help="segment your images with your class names: label maps, overlays with a legend, class fractions",
        description="Segment images (files or folders) with any class names. Writes, per image, <stem>_labels.png "
        "(palette PNG: pixel value = class index), <stem>_overlay.png (colours over the image, with a legend) and "
        "<stem>.json (class fractions), plus summary.json. Unreadable images are reported and skipped.",
    )
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--classes", help="comma-separated names, e.g. 'cat,sofa,wall', or a .txt file with one per line "
                   "(default: the model's own classes: otseg classes)")  # fmt: skip
    p.add_argument("--out", default="runs/segment", help="output folder (default: runs/segment)")
    add_model_arguments(p, precision=True)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser(
        "classes",
        help="list a model's default class names (what segment uses without --classes)",
        description="Print a model's class names, one per line: those of --model (default: the demo model), or "
        "of --preset alone (e.g. otseg classes --preset voc12-inductive).",
    )
    p.add_argument("--model", help="'demo', a preset name, or a model file/folder (default: demo, or --preset's)")
    p.add_argument(
        "--preset",
        help="a preset: its classes (alone), or the preset a reference .pth given as --model was trained with",
    )
    p.set_defaults(func=cmd_classes)

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
    p.add_argument("--max-iters", dest="max_iters", type=int, help="training iterations (default: the preset's)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="images per process (default 4)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], help="autocast dtype (Sinkhorn stays float32)")
    p.add_argument("--eval-interval", dest="eval_interval", type=int, help="evaluate every N iterations")
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N validation images only")
    p.add_argument(
        "--num-workers",
        dest="num_workers",
        type=int,
        help="data-loading workers per process (default 2)",
    )
    p.add_argument("--seed", type=int, help="random seed of the weights init and the data order (default 0)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (needs tensorboard)")
    p.add_argument("--random-init", action="store_true", help="allow training without CLIP weights (smoke tests)")
    p.add_argument(
        "--bad-samples",
        dest="bad_samples",
        choices=["stop", "skip"],
        help="an unreadable/corrupt image or label, out-of-range label or size mismatch: stop training with a "
        "message naming the file (default), or skip the sample (counted, logged to metrics.jsonl)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="config override: model keys (head.use_mps=false) or train.KEY (train.lr=1e-4)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint with the zero-shot protocol: mIoU(S), mIoU(U), hIoU",
        description="Evaluate a checkpoint on a dataset's validation split with the reference protocol (test-size "
        "resize, sliding windows, one dataset-wide confusion matrix) and write the metrics as JSON and Markdown.",
    )
    add_model_arguments(p, named=False, checkpoint_required=True, progress=False, precision=True,
                        device_help="cpu or cuda (default: cuda if available)")  # fmt: skip
    p.add_argument("--data-root", required=True, help="folder holding the dataset in mmsegmentation's layout")
    p.add_argument("--embeddings", help="class embeddings file (e.g. voc12_otseg.npy)")
    p.add_argument("--dataset", help="dataset layout if not the preset's")
    p.add_argument("--out", default="eval.json", help="results JSON (Markdown beside it)")
    p.add_argument("--limit", type=int, help="first N images only")
    p.add_argument("--save-predictions", help="folder for predicted label-map PNGs")
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

    add_bench_parser(sub)
    add_export_parser(sub)
    add_serve_parser(sub)

    add_prepare_parser(sub)
    _add_check_data_parser(sub)
    add_weights_parser(sub)

    p = sub.add_parser(
        "presets",
        help="list the model presets, or describe one",
        description="List the presets (one per line), or describe one: its dataset, classes, split and settings.",
    )
    p.add_argument("name", nargs="?", help="a preset to describe")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser(
        "params",
        help="parameter counts of a preset (and a check against the reference key table)",
        description="Count a preset's parameters by part (frozen CLIP, VPT prompts, head); with --reference-keys, "
        "check every key of the reference checkpoint is mapped or dropped by name and the trainable counts agree.",
    )
    p.add_argument("--preset", default="voc12-inductive", help="the preset counted (default: voc12-inductive)")
    p.add_argument("--reference-keys", metavar="TSV", help="the reference key table, e.g. official_state_dict_voc.tsv")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser(
        "convert",
        help="convert a reference release checkpoint (.pth) to otseg's format (safetensors + config.json)",
        description="Convert a reference release checkpoint (mmseg .pth) into an otseg folder (model.safetensors "
        "with its SHA-256, config.json) that Predictor.from_pretrained, segment, eval and export open.",
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


def _one_line(error: BaseException) -> str:
    """An error's message on one line (KeyError's without the quotes repr adds).

    Library messages sometimes span lines; an exception re-raised from a DataLoader worker carries the
    worker's whole traceback, whose last line is the original error.
    """
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if "Original Traceback" in message and lines:
        return lines[-1]
    return " ".join(lines) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `otseg` command line; expected errors become `otseg COMMAND: error: MESSAGE` and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a reader that went away is seen here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (`otseg classes | head`): stop quietly. Python would report the pipe again when
        # it flushes stdout at exit, so stdout now points at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    # Bad input of any kind raises one of these with a message naming the file or setting: OSError covers
    # unreadable files (FileNotFoundError, PIL's UnidentifiedImageError), ValueError bad values, corrupt
    # checkpoints and bad training samples (otseg.train.trainer.BadSampleError), FloatingPointError a
    # non-finite loss. OTSEG_DEBUG=1 shows the traceback instead.
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, OSError, FloatingPointError) as e:
        if os.environ.get("OTSEG_DEBUG", "") not in ("", "0"):
            raise
        print(f"otseg {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"otseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
