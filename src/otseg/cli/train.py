"""`otseg train`: train OTSeg in a preset's setting on a prepared dataset (torchrun for several processes)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train on VOC 2012 / PASCAL Context-59 / COCO-Stuff-164K / your own data (torchrun for several processes)",
        description="Train OTSeg in the preset's setting (inductive, transductive or fully supervised). "
        "Several processes: torchrun --nproc_per_node=N -m otseg train ... The global batch is the recipe's "
        "(train.global_batch, 16 for the paper's presets: 4 GPUs x 4 images at lr 2e-4) on any number of "
        "processes: each computes --batch-size images at a time and accumulates global_batch / (processes x "
        "batch size) of them per step.",
    )
    p.add_argument("--preset", required=True, help="e.g. voc12-inductive (otseg presets lists them)")
    p.add_argument("--data-root", required=True, help="folder holding the dataset in mmsegmentation's layout")
    p.add_argument("--work-dir", required=True, help="checkpoints, metrics.jsonl, eval.json go here")
    p.add_argument("--clip", help="OpenAI CLIP weights, e.g. ViT-B-16.pt (image tower + live class embeddings)")
    p.add_argument("--embeddings", help="class embeddings file instead of live text (e.g. voc12_otseg.npy)")
    p.add_argument("--dataset", help="dataset layout if not the preset's: voc12, context59, coco_stuff164k, custom")
    p.add_argument("--resume", help="'auto' (latest checkpoint in --work-dir) or a checkpoint path")
    p.add_argument("--init-from", dest="init_from", help="start from these weights (transductive: the inductive run)")
    p.add_argument(
        "--trust-unverified",
        action="store_true",
        help="resume (or --init-from) a checkpoint that carries no SHA-256 of its contents (older otseg); only for "
        "files you trust",
    )
    p.add_argument("--max-iters", dest="max_iters", type=int, help="training iterations (default: the preset's)")
    p.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        help="images per process and micro-batch (default 4, the reference's per GPU, or fewer where the processes "
        "need it: 2 on 8 processes); the global batch stays train.global_batch",
    )
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
        help="config override: model keys (head.use_mps=false), train.KEY (train.lr=1e-4) or data.KEY "
        "(data.img_scale=64,64: the training pipeline's sizes and augmentation, otseg.data.overrides)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otseg.cli.dataset_options import attach_class_embeddings, custom_dataset_overrides, data_config, dataset_name
    from otseg.cli.overrides import split_overrides
    from otseg.config import TrainConfig
    from otseg.data.check import require_usable
    from otseg.data.datasets import build_dataset
    from otseg.data.facts import default_train_config
    from otseg.data.transforms import TestTransform, TrainTransform
    from otseg.distributed import init_distributed, shutdown
    from otseg.errors import BadValueError
    from otseg.eval.evaluate import evaluate
    from otseg.eval.metrics import format_markdown
    from otseg.eval.score import write_results
    from otseg.model.build import build_model, load_clip_into
    from otseg.train.batching import fitting_batch_size, resolve_batch
    from otseg.train.preflight import batch_note, require_transductive_init, warmup_warning
    from otseg.train.run_record import RunInputs
    from otseg.train.trainer import Trainer, seed_everything
    from otseg.validation import coerce_text

    model_over, train_over = split_overrides(args.set)
    model_over.update(custom_dataset_overrides(args))
    # The trainable weights (VPT prompts, head) are drawn at build time and torch's default seed differs per
    # process: seed first (the same on every rank), so that a run is reproducible from --seed.
    seed = args.seed if args.seed is not None else coerce_text(train_over.get("seed", "0"), 0, "train.seed")
    seed_everything(seed)
    model = build_model(args.preset, **model_over)
    if args.clip:
        load_clip_into(model, args.clip)
    elif not args.random_init:
        raise BadValueError(
            "training needs the OpenAI CLIP weights for the frozen image tower: pass --clip ViT-B-16.pt "
            "(or --random-init for a smoke test with random weights)"
        )
    attach_class_embeddings(model, args)
    if model.num_classes != model.config.num_classes:  # checked before training starts, not at its first step
        raise BadValueError(
            f"--embeddings {args.embeddings}: {model.num_classes} rows (classes), but the run has "
            f"{model.config.num_classes} classes ({args.preset}{', ' + args.data_root if args.dataset else ''}); "
            "give the embeddings of exactly these classes, in their order, or --clip to embed the names"
        )

    recipe = default_train_config(model.config)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    changes: dict[str, Any] = {}
    for key, value in train_over.items():
        if key not in fields:
            raise BadValueError(f"unknown training setting train.{key}; valid: {sorted(fields)}")
        changes[key] = coerce_text(value, getattr(recipe, key), f"train.{key}")
    for name in (
        "max_iters", "batch_size", "amp", "seed", "num_workers", "eval_interval", "init_from", "device", "bad_samples",
    ):  # fmt: skip
        given = getattr(args, name, None)
        if given is not None:
            changes[name] = given
    changes["deterministic"] = changes.get("deterministic", recipe.deterministic) or args.deterministic
    changes["tensorboard"] = changes.get("tensorboard", recipe.tensorboard) or args.tensorboard
    # A new config, validated as built: --set train.lr=-1 or --max-iters 0 is one clear error.
    tcfg = dataclasses.replace(recipe, **changes)
    resuming = args.resume not in (None, "auto") or (Path(args.work_dir) / "last_checkpoint").is_file()
    require_transductive_init(args.preset, model.config.setting, model.config.dataset, tcfg, resuming)

    data_cfg = data_config(model.config, args.set)
    dist_info = init_distributed(tcfg.device)
    trainer = None
    try:
        # The global batch over this many processes: its accumulation steps, or one line if it cannot be split.
        # Without --batch-size, the recipe's 4 images per process, or fewer where the processes need it (8 x 2).
        if args.batch_size is None and "batch_size" not in train_over:
            fitting = fitting_batch_size(tcfg.global_batch, dist_info.world_size, tcfg.batch_size)
            tcfg = dataclasses.replace(tcfg, batch_size=fitting)
        tcfg = resolve_batch(tcfg, dist_info.world_size)
        name = dataset_name(args, model.config)
        require_usable(name, args.data_root, ("train", "val"), verbose=dist_info.is_main)
        if dist_info.is_main:
            for note in (warmup_warning(tcfg), batch_note(tcfg, dist_info.world_size, recipe)):
                if note:
                    print(note)
        train_set = build_dataset(name, args.data_root, "train", TrainTransform(data_cfg))
        val_set = build_dataset(name, args.data_root, "val", TestTransform(data_cfg))
        if dist_info.is_main:
            print(f"train: {len(train_set)} images, val: {len(val_set)} images ({name} at {args.data_root})")
            print(f"{model.num_parameters(trainable_only=True):,} trainable parameters")
            print(
                f"data pipeline: img_scale {data_cfg.img_scale[0]}x{data_cfg.img_scale[1]}, ratio "
                f"{data_cfg.ratio_range[0]:g}-{data_cfg.ratio_range[1]:g}, crop {data_cfg.crop_size}, test short side "
                f"{data_cfg.test_short_side} (--set data.KEY=VALUE changes them)"
            )

        def run_eval(m):
            return evaluate(m, val_set, dist_info=dist_info, limit=args.eval_limit, skip_bad=tcfg.bad_samples == "skip")

        inputs = RunInputs(
            clip=args.clip, embeddings=args.embeddings, data_root=args.data_root, dataset=name,
            data=dataclasses.asdict(data_cfg), command=tuple(sys.argv),
        )  # fmt: skip
        trainer = Trainer(
            model, train_set, tcfg, args.work_dir, evaluate=run_eval, dist_info=dist_info, run_inputs=inputs
        )
        trainer.trust_unverified = args.trust_unverified
        result = trainer.train(resume=args.resume)
        if dist_info.is_main and result["eval"]:
            write_results(result["eval"], Path(args.work_dir) / "eval.json", title=args.preset)
            print(format_markdown(result["eval"], title=f"{args.preset} after {result['step']} iterations"))
    finally:
        trainer = None  # frees its DistributedDataParallel wrapper before shutdown() destroys the process group
        shutdown()
    return 0
