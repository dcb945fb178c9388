"""The published numbers of OTSeg (ECCV 2024) and its baseline: the one place they live, each with its source.

`otseg eval` prints the rows of the protocol it evaluated beside its own result (`published_rows`,
`format_published_comparison`). A row applies to a model config when its dataset, setting and seen/unseen split
are the benchmark's: a custom dataset trained from a paper preset, or a preset with another split, gets none.

Sources, as far as they could be checked (the paper's own table was not retrievable from this project's
environment, so no number below was read off it directly):

* "brief": the project's brief, which quotes the paper's VOC inductive table: OTSeg+ 93.3 / 81.6 / 87.1 and the
  ZegCLIP baseline 91.9 / 77.8 / 84.3 (mIoU(S) / mIoU(U) / hIoU). Both rows are internally consistent:
  2SU/(S+U) gives 87.06 and 84.27.
* "leaderboard": Papers with Code's zero-shot-semantic-segmentation leaderboards for arXiv 2403.14183, as mirrored
  by https://beta.hyper.ai/en/papers/2403.14183 (hIoU only; also quoted by reference-spec.md section 8 from
  summary pages): VOC inductive 84.5 / 87.4 (OTSeg / OTSeg+), VOC transductive 94.2 / 94.4, COCO-Stuff inductive
  41.4 / 41.5, COCO-Stuff transductive 49.5 / 49.8.

The two VOC inductive OTSeg+ values disagree (87.1 against 87.4). They are kept apart rather than merged: 87.1
comes with the mIoU(S) and mIoU(U) it is computed from, 87.4 does not (with S = 93.3 it would need U = 82.2). Which
one the published paper prints is recorded as unresolved here until someone reads its table; `docs/` says the
same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from otseg.config import ModelConfig
from otseg.data.facts import find_dataset_facts

__all__ = [
    "PUBLISHED",
    "SOURCES",
    "PublishedRow",
    "format_published_comparison",
    "method_of",
    "published_rows",
]

SOURCES: dict[str, str] = {
    "brief": "project brief, quoting the paper's VOC inductive table (S/U/hIoU; not re-read from the paper here)",
    "leaderboard": (
        "Papers with Code leaderboards for arXiv 2403.14183 (hIoU only), via beta.hyper.ai/en/papers/2403.14183"
    ),
}


@dataclass(frozen=True)
class PublishedRow:
    """One published result: percentages, None where the source gives no value."""

    dataset: str  # a key of otseg.data.facts
    setting: str  # "inductive" | "transductive" | "fully"
    method: str  # "OTSeg" (decoder path), "OTSeg+" (0.5/0.5 ensemble), "ZegCLIP"
    miou_seen: float | None
    miou_unseen: float | None
    hiou: float | None
    source: str  # a key of SOURCES
    note: str = ""


PUBLISHED: tuple[PublishedRow, ...] = (
    PublishedRow("voc12", "inductive", "OTSeg+", 93.3, 81.6, 87.1, "brief"),
    PublishedRow(
        "voc12", "inductive", "OTSeg+", None, None, 87.4, "leaderboard",
        note="disagrees with the 87.1 above; unresolved until the paper's table is read",
    ),
    PublishedRow("voc12", "inductive", "OTSeg", None, None, 84.5, "leaderboard"),
    PublishedRow("voc12", "inductive", "ZegCLIP", 91.9, 77.8, 84.3, "brief"),
    PublishedRow("voc12", "transductive", "OTSeg+", None, None, 94.4, "leaderboard"),
    PublishedRow("voc12", "transductive", "OTSeg", None, None, 94.2, "leaderboard"),
    PublishedRow("coco_stuff164k", "inductive", "OTSeg+", None, None, 41.5, "leaderboard"),
    PublishedRow("coco_stuff164k", "inductive", "OTSeg", None, None, 41.4, "leaderboard"),
    PublishedRow("coco_stuff164k", "transductive", "OTSeg+", None, None, 49.8, "leaderboard"),
    PublishedRow("coco_stuff164k", "transductive", "OTSeg", None, None, 49.5, "leaderboard"),
)  # fmt: skip


def published_rows(config: ModelConfig) -> list[PublishedRow]:
    """The published rows for the protocol `config` evaluates, or [] when it is not a benchmark's: its dataset,
    setting and class list must be the benchmark's, and its unseen classes the benchmark's split."""
    facts = find_dataset_facts(config.dataset)
    if facts is None or tuple(config.class_names) != facts.classes.class_names:
        return []
    if sorted(config.unseen_classes) != sorted(facts.classes.unseen):
        return []
    return [r for r in PUBLISHED if r.dataset == config.dataset and r.setting == config.setting]


def method_of(ensemble_weight: float) -> str | None:
    """Which published method a head's test-time ensemble weight evaluates: 0.5 "OTSeg+", 1.0 "OTSeg"."""
    if ensemble_weight == 0.5:
        return "OTSeg+"
    if ensemble_weight == 1.0:
        return "OTSeg"
    return None


def _cell(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def format_published_comparison(
    metrics: Mapping[str, Any], rows: Sequence[PublishedRow], method: str | None, title: str
) -> str:
    """A Markdown table: our result first, then each published row with its source (rows of `method` first)."""
    ours = "ours" + (f" ({method})" if method else "")
    lines = [
        f"## {title}: published results beside ours",
        "",
        "| row | mIoU(S) | mIoU(U) | hIoU | source |",
        "|---|---:|---:|---:|---|",
        f"| {ours} | "
        + " | ".join(_cell(metrics.get(k), 2) for k in ("miou_seen", "miou_unseen", "hiou"))
        + " | this evaluation |",
    ]
    ordered = sorted(rows, key=lambda r: r.method != method)  # stable: the source order within a method
    for r in ordered:
        source = SOURCES[r.source] + (f"; {r.note}" if r.note else "")
        values = " | ".join(_cell(v, 1) for v in (r.miou_seen, r.miou_unseen, r.hiou))
        lines.append(f"| published: {r.method} | {values} | {source} |")
    return "\n".join(lines) + "\n"
