"""Resuming an interrupted `otseg demo`: finished jobs' results on disk (`otseg.demo.job_results`) and their reuse."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

import otseg.demo.job_results as job_results
import otseg.demo.scheduler as demo_scheduler
from otseg.cli import demo as demo_command
from otseg.demo.job_results import JOB_RESULT, load_job_result, save_job_result
from otseg.demo.jobs import DemoJob, JobContext, job_folder
from otseg.demo.presets import DemoSettings
from otseg.demo.scheduler import job_key

KEY = {"job": "otseg-inductive", "recipe": {"iters": 4}, "panel_ids": (0, 2)}


def _result() -> dict:
    return {
        "rows": [{"method": "otseg", "setting": "inductive", "miou_seen": 50.0, "miou_unseen": None, "hiou": None}],
        "rows_bias0": [],
        "per_class": {"otseg inductive": {"red plain": 12.5}},
        "predictions": {("otseg", "inductive"): [np.arange(12, dtype=np.uint8).reshape(3, 4)]},
        "timings": {"train otseg-inductive": 1.5},
        "curve": [(2, 10.0), (4, 12.25)],
    }


def test_round_trip_gives_back_what_the_job_returned(tmp_path: Path) -> None:
    save_job_result(tmp_path, KEY, _result())
    back = load_job_result(tmp_path, KEY)
    assert back is not None
    expected = _result()
    assert {k: back[k] for k in ("rows", "rows_bias0", "per_class", "timings", "curve")} == {
        k: expected[k] for k in ("rows", "rows_bias0", "per_class", "timings", "curve")
    }
    (maps,) = back["predictions"].values()
    assert list(back["predictions"]) == [("otseg", "inductive")]
    assert maps[0].dtype == np.uint8 and np.array_equal(maps[0], expected["predictions"][("otseg", "inductive")][0])


def test_other_settings_or_a_bad_file_mean_train_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_job_result(tmp_path, KEY) is None  # nothing there
    path = save_job_result(tmp_path, KEY, _result())
    assert load_job_result(tmp_path, {**KEY, "recipe": {"iters": 8}}) is None  # another recipe
    monkeypatch.setattr(job_results, "MAX_JOB_RESULT_BYTES", 100)
    assert load_job_result(tmp_path, KEY) is None  # too large to read
    monkeypatch.undo()
    payload = json.loads(path.read_text())
    for damage in (
        lambda p: p.update(predictions=[{"method": "otseg", "setting": "inductive", "labels": [[[[1]]]]}]),  # 3-D map
        lambda p: p.update(predictions=[{"method": "otseg", "setting": "inductive", "labels": [[[300]]]}]),  # not uint8
        lambda p: p.update(curve=[[1, "nan"]]),
        lambda p: p.update(rows={"not": "a list"}),
        lambda p: p.pop("per_class"),
    ):
        broken = json.loads(json.dumps(payload))
        damage(broken)
        path.write_text(json.dumps(broken))
        assert load_job_result(tmp_path, KEY) is None
    path.write_text('{"key": ')  # cut short
    assert load_job_result(tmp_path, KEY) is None


def test_results_kept_by_another_release_are_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = JobContext(DemoSettings.quick(), tmp_path / "world", tmp_path / "clip.safetensors", tmp_path / "out", (0, 1))
    job = DemoJob("otseg", "fully")
    folder = job_folder(job, ctx)
    folder.mkdir(parents=True)
    save_job_result(folder, job_key(job, ctx), _result())
    assert load_job_result(folder, job_key(job, ctx)) is not None
    monkeypatch.setattr(demo_scheduler, "__version__", "0.0.1-another-release")
    assert load_job_result(folder, job_key(job, ctx)) is None


def _demo(out: Path) -> int:
    parser = argparse.ArgumentParser()
    demo_command.add_parser(parser.add_subparsers(dest="command"))
    quick = ["--quick", "--no-progress", "--workers", "1", "--threads", "1"]
    args = parser.parse_args(["demo", "--out", str(out), *quick])
    result: int = args.run(args)
    return result


def test_an_interrupted_demo_reuses_its_finished_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert _demo(out) == 0
    rows = json.loads((out / "results.json").read_text())
    runs = out / "runs"
    assert all((runs / name / JOB_RESULT).is_file() for name in ("zegclip-inductive", "otseg-transductive"))
    capsys.readouterr()
    # As if the run had stopped during the last two jobs, and the otseg-inductive checkpoint that otseg-transductive
    # starts from had been lost: that inductive job must be trained again too.
    (runs / "zegclip-transductive" / JOB_RESULT).unlink()
    (runs / "otseg-transductive" / JOB_RESULT).unlink()
    (runs / "otseg-inductive" / "iter_2.pt").unlink()
    assert _demo(out) == 0
    printed = capsys.readouterr().out
    reused = {line.split()[1].rstrip(":") for line in printed.splitlines() if line.startswith("[reuse]")}
    started = {line.split()[1].rstrip(":") for line in printed.splitlines() if line.startswith("[start]")}
    assert reused == {"zegclip-inductive", "zegclip-fully", "otseg-fully"}
    assert started == {"zegclip-transductive", "otseg-inductive", "otseg-transductive"}
    assert json.loads((out / "results.json").read_text()) == rows  # the same table as one uninterrupted run
    info = json.loads((out / "demo_info.json").read_text())
    assert set(info["reused_jobs"]) == reused


def test_an_interrupted_training_run_resumes_from_its_last_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert _demo(out) == 0
    rows = json.loads((out / "results.json").read_text())
    curves = json.loads((out / "demo_info.json").read_text())["curves"]
    # As if zegclip-fully had been stopped just after its checkpoint at iteration 2, before that evaluation: its
    # result, its last checkpoint and the evaluations logged from iteration 2 on are gone.
    work = out / "runs" / "zegclip-fully"
    (work / JOB_RESULT).unlink()
    (work / "iter_4.pt").unlink()
    log = work / "metrics.jsonl"
    kept = [line for line in log.read_text().splitlines() if not ('"eval/' in line and json.loads(line)["step"] >= 2)]
    log.write_text("\n".join(kept) + "\n")
    capsys.readouterr()
    assert _demo(out) == 0
    printed = capsys.readouterr().out
    assert "[done] zegclip-fully (resumed at iteration 2," in printed
    assert printed.count("[reuse]") == 5
    # The same numbers, curve and panels' rows as the uninterrupted run.
    assert json.loads((out / "results.json").read_text()) == rows
    assert json.loads((out / "demo_info.json").read_text())["curves"] == curves
