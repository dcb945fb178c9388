"""`otseg --help` and every subcommand's `--help` answer without importing torch (a fresh process each)."""

from __future__ import annotations

import subprocess
import sys

from otseg.cli import build_parser

# Runs `otseg <argv> --help` in this process and prints the torch modules loaded by then, one per line.
_HELP_THEN_LIST_TORCH = """
import sys
from otseg.cli import main
try:
    main(sys.argv[1:] + ["--help"])
except SystemExit:
    pass
print("\\n".join(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))), file=sys.stderr)
"""


def _subcommands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(sub.choices)  # type: ignore[arg-type]


def test_every_help_imports_no_torch() -> None:
    commands = _subcommands()
    assert {"segment", "train", "demo", "serve", "export", "weights"} <= set(commands)
    for argv in [[], *([c] for c in commands)]:
        done = subprocess.run(
            [sys.executable, "-c", _HELP_THEN_LIST_TORCH, *argv], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (argv, done.stderr)
        assert "usage: otseg" in done.stdout, argv
        assert done.stderr.strip() == "", f"otseg {' '.join(argv)} --help imported {done.stderr.split()[:5]}"


def test_module_help_under_importtime_lists_no_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "otseg", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "usage: otseg" in done.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "otseg.cli" in imported  # importtime did report the imports
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]
