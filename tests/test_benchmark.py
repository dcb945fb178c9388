"""`otseg bench` at each precision: images per second per variant, float32 and bf16 timed in the same rounds."""

from __future__ import annotations

import re

import pytest

from conftest import TINY_SEGMENTOR
from otseg import benchmark
from otseg.benchmark import efficiency_table, format_precision_table
from otseg.cli import main
from otseg.model import precision as precision_module
from otseg.model.build import build_model


@pytest.fixture(autouse=True)
def tiny_variants(monkeypatch):
    """The three variants at the tiny golden size: what is checked is the protocol, not the speed."""
    monkeypatch.setattr(benchmark, "build_model", lambda preset, **over: build_model(preset, **TINY_SEGMENTOR, **over))


def test_efficiency_table_times_each_precision(monkeypatch):
    calls: list[str] = []
    predict_scores = benchmark.OTSeg.predict_scores

    def counted(self, images, classes=None, precision="float32", options=None):
        calls.append(precision)
        return predict_scores(self, images, classes, precision, options)

    monkeypatch.setattr(benchmark.OTSeg, "predict_scores", counted)
    rows = efficiency_table(image_size=32, repeats=2, warmup=0, capped=False, precisions=("bf16",))
    assert calls.count("bf16") == 3 * 2  # three variants x two rounds, besides float32's
    for row in rows:
        speed = row["images_per_second_by_precision"]
        assert list(speed) == ["float32", "bf16"] and all(v > 0 for v in speed.values())
        assert speed["float32"] == pytest.approx(row["images_per_second"])
        assert row["preset"] == "voc12-inductive"
    table = format_precision_table(rows)
    assert "| model | float32 | bf16 | bf16 / float32 |" in table
    assert re.search(r"\| OTSeg\+ \| \d+\.\d{3} \| \d+\.\d{3} \| \d+\.\d\dx \|", table), table
    only = efficiency_table(image_size=32, repeats=1, warmup=0, capped=False)
    assert list(only[0]["images_per_second_by_precision"]) == ["float32"]
    with pytest.raises(ValueError, match="precision 'fp16'"):
        efficiency_table(image_size=32, repeats=1, warmup=0, capped=False, precisions=("fp16",))  # type: ignore[arg-type]


def test_bench_cli_precision(monkeypatch, capsys):
    argv = ["bench", "--device", "cpu", "--image-size", "32", "--repeats", "1", "--warmup", "0", "--no-capped"]
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    assert main(argv) == 0  # default: bf16 only where the hardware has it
    out = capsys.readouterr().out
    assert "bf16 not timed (this CPU has no bfloat16 units" in out and "by precision" not in out
    assert main([*argv, "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "Images per second by precision: preset voc12-inductive" in out and "| bf16 / float32 |" in out
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert main(argv) == 0
    assert "| bf16 / float32 |" in capsys.readouterr().out
