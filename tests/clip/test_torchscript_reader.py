"""The TorchScript reader takes tensors and nothing else: a crafted archive cannot run code."""

from __future__ import annotations

import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import golden_file
from otseg.formats.openai_clip import read_clip_state_dict
from otseg.formats.torchscript import TorchScriptReadError, read_torchscript_state_dict


def _crafted_archive(path: Path, payload: bytes) -> None:
    """A zip shaped like a TorchScript archive whose data.pkl is `payload`."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", payload)
        zf.writestr("evil/constants.pkl", pickle.dumps(()))
        zf.writestr("evil/code/__torch__/m.py", "class M(Module):\n  pass\n")
        zf.writestr("evil/version", "3\n")


def _global_call(module: str, name: str, arg: str) -> bytes:
    """Protocol-2 pickle bytes for `module.name(arg)` (the classic code-execution gadget)."""
    return (
        b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n"
        + b"X" + len(arg.encode()).to_bytes(4, "little") + arg.encode() + b"\x85R."
    )  # fmt: skip


@pytest.mark.parametrize(("module", "name"), [("os", "system"), ("builtins", "exec"), ("posix", "system")])
def test_malicious_global_is_refused_and_writes_nothing(tmp_path: Path, module: str, name: str) -> None:
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if name == "system" else f"open({str(marker)!r}, 'w').write('x')"
    path = tmp_path / "ViT-B-16.pt"
    _crafted_archive(path, _global_call(module, name, command))
    with pytest.raises(ValueError, match=rf"ViT-B-16\.pt.*refused global {module}\.{name}") as info:
        read_clip_state_dict(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ViT-B-16.pt"]


def test_malicious_archive_through_the_cli_is_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "clip.pt"
    _crafted_archive(path, _global_call("os", "system", f"touch {marker}"))
    out = subprocess.run(
        [sys.executable, "-m", "otseg", "convert", "x.pth", "--preset", "voc12-inductive", "--out",
         str(tmp_path / "out"), "--clip", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_golden_archive_matches_torch_jit(tmp_path: Path) -> None:
    path = golden_file("openai_clip_jit.pt")
    ours = read_torchscript_state_dict(path)
    assert len(ours) == 77  # 74 weights + the three integer scalars OpenAI's build_model drops
    assert ours["visual.conv1.weight"].dtype == torch.float16
    assert ours["input_resolution"].dtype == torch.int64


def test_storage_size_mismatch_is_refused(tmp_path: Path) -> None:
    src = golden_file("openai_clip_jit.pt")
    path = tmp_path / "cut.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("/data/0"):
                data = data[:-2]
            zout.writestr(item.filename.replace("openai_clip_jit/", "cut/"), data)
    with pytest.raises(TorchScriptReadError, match=r"cut\.pt.*holds \d+ bytes"):
        read_torchscript_state_dict(path)


def _rewrite(src: Path, dst: Path, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            name, data, compress = edit(item.filename, zin.read(item.filename))
            zout.writestr(name, data, compress_type=compress)


def test_out_of_bounds_and_compressed_records_are_refused(tmp_path: Path) -> None:
    src = golden_file("openai_clip_jit.pt")
    squeezed = tmp_path / "squeezed.pt"
    _rewrite(src, squeezed, lambda n, d: (n, d, zipfile.ZIP_DEFLATED if n.endswith("/data/3") else zipfile.ZIP_STORED))
    with pytest.raises(TorchScriptReadError, match=r"squeezed\.pt.*compressed"):
        read_torchscript_state_dict(squeezed)
    # A tensor record whose shape reaches past its storage: data.pkl claims (77, 16) over a 4-element storage.
    with zipfile.ZipFile(src) as zf:
        first = next(n for n in zf.namelist() if n.endswith("/data/0"))
        nbytes = zf.getinfo(first).file_size
    short = tmp_path / "short.pt"
    _rewrite(src, short, lambda n, d: (n, d[:16] if n == first else d, zipfile.ZIP_STORED))
    with pytest.raises(TorchScriptReadError, match=r"short\.pt"):
        read_torchscript_state_dict(short)
    assert nbytes > 16
