"""Small frictions a newcomer met on the command line."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_model
from otseg.cli import build_parser, main
from otseg.model_files.otseg_folder import save_pretrained

REPO = Path(__file__).resolve().parents[2]


def test_every_subcommand_and_option_has_help() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {action.dest: action.help for action in sub._choices_actions}
    missing = []
    for name, parser in sub.choices.items():
        if not helps.get(name) or not parser.description:
            missing.append(f"{name} (help or description)")
        missing += [
            f"{name} {'/'.join(a.option_strings) or a.dest}"
            for a in parser._actions
            if not isinstance(a, argparse._HelpAction) and not a.help
        ]
    assert missing == []


def test_unknown_model_name_lists_the_valid_ones(capsys) -> None:
    assert main(["segment", "x.png", "--model", "voc12", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no model 'voc12'" in err and "built-in models are demo" in err and err.count("\n") == 1


def test_classes_with_a_preset_alone_and_a_note_when_ignored(capsys) -> None:
    assert main(["classes", "--preset", "voc12-inductive"]) == 0
    out = capsys.readouterr()
    assert out.out.split("\n")[:2] == ["aeroplane", "bicycle"] and out.err == ""
    assert main(["classes", "--model", "context59-inductive", "--preset", "voc12-inductive"]) == 0
    out = capsys.readouterr()
    assert "--preset voc12-inductive is ignored" in out.err and out.out.split("\n")[0] == "aeroplane"
    assert len(out.out.split()) > 20  # Context's classes, not VOC's


def test_classes_into_a_closed_pipe_exits_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `otseg classes | head` after head has gone
    try:
        out = subprocess.run(
            [sys.executable, "-m", "otseg", "classes", "--preset", "coco-inductive"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert out.returncode == 0 and out.stderr == ""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pretrained(make_tiny_model(), tmp_path_factory.mktemp("tiny") / "m")


def test_a_bad_class_list_is_one_error_before_any_image(model_dir: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    code = main(["segment", str(folder), "--classes", "cat, sofa, cat", "--checkpoint", str(model_dir), "--out",
                 str(out), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("appears twice") == 1 and err.count("\n") == 1
    assert not out.exists()  # nothing was segmented
