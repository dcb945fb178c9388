"""What `otseg train` and `otseg eval` share: the dataset a run reads, and the class embeddings it scores with."""

from __future__ import annotations

import argparse
from typing import Any

from otseg.cli.overrides import parse_overrides
from otseg.config import DataConfig, ModelConfig
from otseg.data.datasets import read_custom_classes
from otseg.data.facts import data_config_for
from otseg.data.overrides import apply_data_overrides, split_data_overrides
from otseg.errors import BadValueError
from otseg.formats.class_embeddings import load_class_embeddings
from otseg.model.segmentor import OTSeg

__all__ = ["attach_class_embeddings", "custom_dataset_overrides", "data_config", "dataset_name"]


def attach_class_embeddings(model: OTSeg, args: argparse.Namespace) -> None:
    """The class embeddings --embeddings names, or the model's class names embedded by its text tower."""
    if getattr(args, "embeddings", None):
        model.set_class_embeddings(load_class_embeddings(args.embeddings))
    elif model.text_encoder is not None:
        model.set_classes(model.class_names)
    elif not model.has_class_embeddings:
        raise BadValueError(
            "no class text embeddings: pass --clip ViT-B-16.pt (embeds the class names live) or --embeddings "
            "FILE.npy (e.g. the reference's voc12_otseg.npy)"
        )


def custom_dataset_overrides(args: argparse.Namespace) -> dict[str, Any]:
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


def dataset_name(args: argparse.Namespace, model_cfg: ModelConfig) -> str:
    """--dataset, or the preset's dataset."""
    return args.dataset or model_cfg.dataset


def data_config(model_cfg: ModelConfig, items: list[str] | None) -> DataConfig:
    """The data pipeline feeding `model_cfg`, with the "data.KEY=VALUE" entries of --set applied."""
    data_over, _ = split_data_overrides(parse_overrides(items))
    return apply_data_overrides(data_config_for(model_cfg), data_over)
