"""The published numbers (one table, each row with its source) and `otseg eval` printing them beside ours."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fake_layouts import make_voc

from conftest import tiny_train_args
from otseg.cli import main
from otseg.eval.published import PUBLISHED, SOURCES, format_published_comparison, method_of, published_rows
from otseg.model.presets import get_preset, list_presets


def test_every_row_names_a_known_source_and_its_hiou_agrees_with_its_s_and_u() -> None:
    for row in PUBLISHED:
        assert row.source in SOURCES
        if row.miou_seen is not None and row.miou_unseen is not None:
            s, u = row.miou_seen, row.miou_unseen
            assert row.hiou == pytest.approx(2 * s * u / (s + u), abs=0.05), row


def test_the_two_voc_inductive_otseg_plus_values_are_both_kept_with_their_sources() -> None:
    rows = [r for r in published_rows(get_preset("voc12-inductive")) if r.method == "OTSeg+"]
    assert sorted((r.hiou, r.source) for r in rows) == [(87.1, "brief"), (87.4, "leaderboard")]
    assert next(r for r in rows if r.hiou == 87.4).note  # says it disagrees


def test_rows_apply_only_to_the_benchmark_protocol() -> None:
    with_rows = {p for p in list_presets() if published_rows(get_preset(p))}
    assert with_rows == {"voc12-inductive", "voc12-transductive", "coco-inductive", "coco-transductive"}
    voc = get_preset("voc12-inductive")
    assert published_rows(dataclasses.replace(voc, dataset="custom")) == []
    assert published_rows(dataclasses.replace(voc, unseen_classes=(0, 1, 2, 3, 4))) == []


def test_method_follows_the_ensemble_weight() -> None:
    assert (method_of(0.5), method_of(1.0), method_of(0.3)) == ("OTSeg+", "OTSeg", None)


def test_comparison_puts_ours_first_then_our_methods_rows() -> None:
    rows = published_rows(get_preset("voc12-inductive"))
    text = format_published_comparison({"miou_seen": 90.0, "miou_unseen": 70.0, "hiou": 78.75}, rows, "OTSeg", "x")
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")][1:]  # after the header
    assert lines[0].startswith("| ours (OTSeg) | 90.00 | 70.00 | 78.75 |")
    assert lines[1].startswith("| published: OTSeg | — | — | 84.5 |")
    assert len(lines) == 1 + len(rows)


def test_eval_prints_the_papers_rows_beside_ours(tmp_path: Path, capsys) -> None:
    root = make_voc(tmp_path / "data")
    wd = tmp_path / "run"
    assert main(["train", *tiny_train_args("voc12-inductive", root, wd, max_iters=1)]) == 0
    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(wd / "iter_1.pt"), "--data-root", str(root), "--out", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "voc12-inductive: published results beside ours" in out
    assert "| ours (OTSeg+) |" in out and "| published: OTSeg+ | 93.3 | 81.6 | 87.1 |" in out and "87.4" in out
