"""The one table of facts per dataset: class names, zero-shot split, pipelines, recipe, official counts.

The facts are data (`facts.json`, shipped as package data); this module is their typed loader, and every
other module (presets, datasets, data checks, training, evaluation, `prepare`) reads them from here. Class names
are exactly the reference datasets' `CLASSES` strings, in the order of the label ids (after `reduce_zero_label`
for VOC, Context and ADE20K): the order matters because class id `c` is row `c` of the text-embedding table and
channel `c` of the score map.

Part of the bottom layer: imports nothing from otseg but the configuration layer.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from otseg.config import DataConfig, ModelConfig, Setting, TrainConfig
from otseg.errors import BadValueError, UnknownNameError

__all__ = [
    "CUSTOM_PIPELINE",
    "DATASET_ALIASES",
    "DatasetClasses",
    "DatasetFacts",
    "PipelineFacts",
    "data_config_for",
    "dataset_facts",
    "default_train_config",
    "find_dataset_facts",
    "list_datasets",
]

_RESOURCE = "facts.json"
# Other names users give the datasets (mmseg's folder and config names).
DATASET_ALIASES: dict[str, str] = {
    "voc": "voc12",
    "voc12_aug": "voc12",
    "context": "context59",
    "coco": "coco_stuff164k",
}
_SETTINGS: tuple[str, ...] = typing.get_args(Setting)


@dataclass(frozen=True)
class DatasetClasses:
    """Class names of one dataset and its zero-shot split (`unseen` is empty where there is none)."""

    name: str
    class_names: tuple[str, ...]
    unseen: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.class_names)
        bad = [i for i in self.unseen if not 0 <= i < n]
        if bad:
            raise BadValueError(f"{self.name}: unseen ids {bad} out of range for {n} classes")
        if len(set(self.unseen)) != len(self.unseen):
            raise BadValueError(f"{self.name}: duplicate unseen ids {list(self.unseen)}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def seen(self) -> tuple[int, ...]:
        """Ids of the seen classes: every id not in `unseen`, ascending."""
        unseen = set(self.unseen)
        return tuple(i for i in range(self.num_classes) if i not in unseen)

    @property
    def unseen_names(self) -> tuple[str, ...]:
        return tuple(self.class_names[i] for i in self.unseen)

    @property
    def seen_names(self) -> tuple[str, ...]:
        return tuple(self.class_names[i] for i in self.seen)


@dataclass(frozen=True)
class PipelineFacts:
    """What a label layout fixes for the data pipelines: mmseg's `img_scale`, `reduce_zero_label`, the test
    resize and the training crop."""

    img_scale: tuple[int, int]
    reduce_zero_label: bool
    test_short_side: int
    image_size: int  # training crop = the model's input resolution


# A user folder (otseg.data.datasets, "custom" layout): labels are stored as 0..K-1 with 255 = ignore.
CUSTOM_PIPELINE = PipelineFacts(img_scale=(2048, 512), reduce_zero_label=False, test_short_side=512, image_size=512)


@dataclass(frozen=True)
class DatasetFacts:
    """Everything the reference fixes for one dataset (`facts.json`; field comments say where each comes from)."""

    key: str  # "voc12", "context59", "coco_stuff164k", "ade20k"
    title: str
    classes: DatasetClasses
    pipeline: PipelineFacts  # configs/_base_/datasets/*.py
    num_prompt_tokens: int  # VPT tokens of the models trained on it
    templates: str  # prompt template set (a key of otseg.config.TEMPLATE_SETS)
    embeddings: str | None  # the reference's released class-embedding .npy; None: embedded live
    crop_size: int  # slide inference window
    stride: int  # slide inference stride
    reference_iters: dict[str, int] | None  # schedule per setting (spec 4.4); None: not trained on
    official_counts: dict[str, int]  # images per split of the official release


def _record(key: str, entry: dict[str, Any]) -> DatasetFacts:
    iters = entry["reference_iters"]
    if iters is not None and set(iters) != set(_SETTINGS):
        raise BadValueError(f"{_RESOURCE}: {key}.reference_iters must name {_SETTINGS}, got {sorted(iters)}")
    return DatasetFacts(
        key=key,
        title=str(entry["title"]),
        classes=DatasetClasses(key, tuple(entry["class_names"]), tuple(sorted(int(i) for i in entry["unseen"]))),
        pipeline=PipelineFacts(
            img_scale=(int(entry["img_scale"][0]), int(entry["img_scale"][1])),
            reduce_zero_label=bool(entry["reduce_zero_label"]),
            test_short_side=int(entry["test_short_side"]),
            image_size=int(entry["image_size"]),
        ),
        num_prompt_tokens=int(entry["num_prompt_tokens"]),
        templates=str(entry["templates"]),
        embeddings=entry["embeddings"],
        crop_size=int(entry["crop_size"]),
        stride=int(entry["stride"]),
        reference_iters=None if iters is None else {s: int(iters[s]) for s in _SETTINGS},
        official_counts={str(k): int(v) for k, v in entry["official_counts"].items()},
    )


@lru_cache(maxsize=1)
def _table() -> dict[str, DatasetFacts]:
    text = resources.files("otseg.data").joinpath(_RESOURCE).read_text(encoding="utf-8")
    raw: dict[str, Any] = json.loads(text)
    return {k: _record(k, v) for k, v in raw.items() if not k.startswith("_")}


def list_datasets() -> list[str]:
    """Names accepted by `dataset_facts`, sorted."""
    return sorted(_table())


def dataset_facts(name: str) -> DatasetFacts:
    """The facts of dataset `name`: `voc12`, `context59`, `coco_stuff164k` or `ade20k`.

    Raises:
        KeyError: an unknown name (the message lists the valid ones).
    """
    table = _table()
    if name not in table:
        raise UnknownNameError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(table))}")
    return table[name]


def find_dataset_facts(name: str) -> DatasetFacts | None:
    """The facts of dataset `name`, or None for a name the table does not hold (a user's own folder)."""
    return _table().get(name)


def _pipeline(dataset: str) -> PipelineFacts:
    facts = find_dataset_facts(dataset)
    return facts.pipeline if facts is not None else CUSTOM_PIPELINE


def data_config_for(cfg: ModelConfig) -> DataConfig:
    """The `DataConfig` feeding model `cfg`.

    The training crop is the model's input resolution (`vision.image_size`), the test short side, mean and std
    come from the model config (so cross-dataset presets use the *target* dataset's test pipeline), and
    `img_scale` / `reduce_zero_label` come from the dataset's facts (a dataset not in the table: a user folder's).
    """
    p = _pipeline(cfg.dataset)
    return DataConfig(
        dataset=cfg.dataset,
        img_scale=p.img_scale,
        crop_size=cfg.vision.image_size,
        reduce_zero_label=p.reduce_zero_label,
        test_short_side=cfg.test_short_side,
        mean=cfg.mean,
        std=cfg.std,
    )


def default_train_config(model_config: ModelConfig) -> TrainConfig:
    """The reference recipe for a model config: its iteration count; checkpoints every 2k (1k for 10k runs)."""
    facts = find_dataset_facts(model_config.dataset)
    schedule = facts.reference_iters if facts is not None else None
    iters = schedule[model_config.setting] if schedule else 20000
    # Checkpoints every 2000 iterations (the reference: every 10k, every 1k on 10k schedules): resuming
    # after a crash should not cost hours.
    # The reference's global batch: 4 GPUs x 4 images (the trainer derives the accumulation steps from the
    # processes started and --batch-size).
    return TrainConfig(
        max_iters=iters, global_batch=16, batch_size=4, checkpoint_interval=1000 if iters <= 10000 else 2000
    )
