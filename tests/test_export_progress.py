"""`export_onnx(progress=...)` and `otseg export`: each stage of the exporter says when it starts and ends, with an
estimate after the tracing, and a line while it runs, so a slow machine does not look hung."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from otseg import export as export_module  # noqa: E402
from otseg.export import StageClock, _ExporterMessages, export_onnx  # noqa: E402
from test_export import SEG, fixed_iteration_scores, golden_model  # noqa: E402


def test_stage_clock_reports_start_ticks_and_end():
    lines: list[str] = []
    with StageClock(lines.append, every_s=0.05) as clock:
        clock.start("tracing", estimate_s=0.01)
        time.sleep(0.3)
        clock.end()
        time.sleep(0.15)  # no stage running: no ticks
    assert lines[0] == "  tracing (about 0 s) ..."
    ticks = [ln for ln in lines if ln.startswith("  ... tracing: ")]
    assert len(ticks) >= 2 and all("s so far, about 0 s expected" in t for t in ticks)
    assert "longer than estimated" in ticks[-1]
    assert re.fullmatch(r"  tracing: 0\.\d s", lines[-1]), lines[-1]
    assert clock.durations["tracing"] >= 0.3


def test_exporter_messages_become_stages_with_estimates():
    lines: list[str] = []
    passthrough = io.StringIO()
    clock = StageClock(lines.append, every_s=60)
    messages = _ExporterMessages(clock, passthrough)
    messages.write(
        "[torch.onnx] Obtain model graph for `_EncodeDecode(` with `torch.export.export(..., strict=False)`...\n"
    )
    clock.started -= 2.0  # as if tracing took 2 s
    messages.write("[torch.onnx] Obtain model graph for `_EncodeDecode(` ... ✅\nsomething else the exporter prints\n")
    messages.write("[torch.onnx] Run decomp")  # a line in two writes
    messages.write("ositions...\n")
    messages.flush()
    assert lines[0] == "  tracing the model (torch.export) ..."
    assert re.fullmatch(r"  tracing the model \(torch.export\): 2\.0 s", lines[1]), lines[1]
    ratio = export_module._EXPORTER_STAGES["Run decompositions"][1]
    assert lines[2] == f"  decomposing to core ATen operators (about {ratio * 2:.0f} s) ..."
    assert passthrough.getvalue() == "something else the exporter prints\n"


def test_export_reports_every_stage_and_exports_the_same_graph(tmp_path: Path, monkeypatch):
    model = golden_model()
    lines: list[str] = []
    monkeypatch.setattr(export_module, "PROGRESS_EVERY_S", 0.2)
    path = export_onnx(model, tmp_path / "a.onnx", sinkhorn_iters=2, progress=lines.append)
    starts = [ln for ln in lines if ln.endswith(" ...")]
    assert [s.split(" (")[0].rstrip(" .") for s in starts] == [
        "  tracing the model",
        "  decomposing to core ATen operators",
        "  translating the graph to ONNX",
        "  optimising the ONNX graph",
        "  writing a.onnx",
    ]
    assert all(re.search(r"\(about \d+ s\)", s) for s in starts[1:4])  # estimated from the tracing's time
    ends = [ln for ln in lines if re.fullmatch(r"  [a-zA-Z ().]+: \d+\.\d s", ln)]
    assert len(ends) == 4
    # The graph is the one a silent export writes (tests/test_export_onnx.py): PyTorch's fixed-iteration scores.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_scores = session.run(None, {"image": SEG["images"].numpy()})[0]
    assert float(np.abs(onnx_scores - fixed_iteration_scores(model, SEG["images"], iters=2)).max()) < 1e-4
