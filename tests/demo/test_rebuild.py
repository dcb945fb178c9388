"""The rebuild commands of the shipped weight packs (`python -m otseg.demo.rebuild`): argument checks and how the
command starts. The rebuilds themselves take minutes; `test_tiny_clip` and `test_demo_run` cover packing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from otseg.demo.rebuild import main, out_path_problem


def test_out_path_problem_names_the_path_and_the_fix(tmp_path: Path) -> None:
    assert out_path_problem(tmp_path / "pack.safetensors") is None
    folder = out_path_problem(tmp_path)
    assert folder is not None and str(tmp_path) in folder and "file name" in folder
    missing = out_path_problem(tmp_path / "nowhere" / "pack.safetensors")
    assert missing is not None and str(tmp_path / "nowhere") in missing and "does not exist" in missing


@pytest.mark.parametrize("pack", ["tiny-clip", "demo-model"])
def test_bad_out_stops_before_training_with_one_line(
    pack: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([pack, "--out", str(tmp_path / "missing" / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and pack in err[0] and "missing" in err[0]


def test_unknown_pack_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["tiny-model", "--out", "x.safetensors"])
    assert exc.value.code == 2


def test_runs_as_a_module_without_a_second_copy() -> None:
    # `python -m` on a module that `import otseg` already imported runs a second copy of it and warns; the
    # command's own module is imported by nothing else.
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "otseg.demo.rebuild", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "tiny-clip" in done.stdout and "demo-model" in done.stdout
    assert "RuntimeWarning" not in done.stderr
