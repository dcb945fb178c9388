"""A torch file costs memory in proportion to its size, whatever it declares (`otseg.formats.torch_pickle`,
`otseg.formats.stored_tensors`, `otseg.formats.torchscript`, `otseg.formats.class_embeddings`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from crafted import Module, Storage, View, run_bounded, torch_zip, torchscript_zip
from otseg.cli import main
from otseg.formats.class_embeddings import load_class_embeddings
from otseg.formats.openai_clip import read_clip_state_dict
from otseg.formats.stored_tensors import check_stored_tensors
from otseg.formats.torch_pickle import safe_torch_load
from otseg.model_files.open_model import load_model

FOUR_FLOATS = Storage("0", 4)


def npy_declaring(path: Path, shape: tuple[int, ...], data: bytes) -> Path:
    """A .npy file whose header declares float16 `shape` and whose data is `data` (whatever its length)."""
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": shape})
        f.write(data)
    return path


def _one_line(err: BaseException, *names: str) -> str:
    msg = str(err)
    assert "\n" not in msg, msg
    for name in names:
        assert name in msg, (name, msg)
    return msg


def stride_zero_checkpoint(path: Path) -> Path:
    """An 600-byte torch.save-shaped file whose only tensor is a 100000 x 100000 view of 4 floats (40 GB as float32)."""
    return torch_zip(path, {"model": {"w": View(FOUR_FLOATS, (100_000, 100_000), (0, 0))}}, {"0": bytes(16)})


def test_a_view_larger_than_its_storage_is_refused_before_any_conversion(tmp_path: Path) -> None:
    path = stride_zero_checkpoint(tmp_path / "iter_1.pt")
    assert path.stat().st_size < 1000
    with pytest.raises(ValueError) as info:
        safe_torch_load(path)
    _one_line(info.value, str(path), "model.w", "(100000, 100000)", "16 stored bytes")
    with pytest.raises(ValueError) as info:
        load_model(path)
    _one_line(info.value, str(path), "model.w")


def test_views_repeating_one_shared_storage_are_refused(tmp_path: Path) -> None:
    path = torch_zip(tmp_path / "x.pt", {f"w{i}": View(FOUR_FLOATS, (4,), (1,)) for i in range(3)}, {"0": bytes(16)})
    with pytest.raises(ValueError) as info:
        safe_torch_load(path)
    _one_line(info.value, str(path), "view 48 bytes of 16 stored bytes")
    tied = torch.zeros(4)
    check_stored_tensors({"a": tied, "b": tied}, "tied weights")  # two names for one tensor: accepted


def test_compressed_records_are_refused_unread(tmp_path: Path) -> None:
    n = 1_000_000
    path = torch_zip(tmp_path / "x.pt", {"w": View(Storage("0", n), (n,), (1,))}, {"0": bytes(4 * n)}, compress=True)
    assert path.stat().st_size < 10_000
    with pytest.raises(ValueError) as info:
        safe_torch_load(path)
    _one_line(info.value, str(path), "inflate to 4,00", "refused unread")


def test_the_pre_1_6_format_is_refused_unless_pickle_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError) as info:
        safe_torch_load(path)
    _one_line(info.value, str(path), "pre-1.6", "--allow-pickle")
    assert torch.equal(safe_torch_load(path, allow_pickle=True)["w"], torch.ones(3))


def test_a_stride_zero_tensor_in_a_torchscript_archive_is_refused_before_conversion(tmp_path: Path) -> None:
    path = torchscript_zip(
        tmp_path / "ViT-B-16.pt", Module(weight=View(FOUR_FLOATS, (100_000, 100_000), (0, 0))), {"0": bytes(16)}
    )
    assert path.stat().st_size < 1000
    with pytest.raises(ValueError) as info:
        read_clip_state_dict(path)
    _one_line(info.value, str(path), "weight", "(100000, 100000)")


def test_the_same_archive_through_the_cli_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    clip = torchscript_zip(
        tmp_path / "ViT-B-16.pt", Module(weight=View(FOUR_FLOATS, (100_000, 100_000), (0, 0))), {"0": bytes(16)}
    )
    out = tmp_path / "out"
    code = main(["convert", "x.pth", "--preset", "voc12-inductive", "--out", str(out), "--clip", str(clip)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and str(clip) in err and "(100000, 100000)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ViT-B-16.pt"]  # nothing written


def test_every_crafted_torch_file_is_refused_within_256_mb(tmp_path: Path) -> None:
    """In a child whose address space may grow by 256 MB only, each file is refused with its one line: the checks
    come before any allocation the files' claims would cause (converting b.pt's float16 view to float32 alone asks
    for 10 GB; reading c.pt inflates 320 MB; d.npy declares 12.8 GB)."""
    stride_zero_checkpoint(tmp_path / "a.pt")
    halves = Storage("0", 8, "HalfStorage")  # OpenAI's archives are float16; the reader converts to float32
    torchscript_zip(tmp_path / "b.pt", Module(w=View(halves, (50_000, 50_000), (0, 0))), {"0": bytes(16)})
    n = 80_000_000  # 320 MB inflated
    torch_zip(tmp_path / "c.pt", {"w": View(Storage("0", n), (n,), (1,))}, {"0": bytes(4 * n)}, compress=True)
    npy_declaring(tmp_path / "d.npy", (4000, 200, 8000), bytes(32))  # 12.8 GB declared
    code = f"""
from pathlib import Path
from otseg.model_files.open_model import load_model
from otseg.formats.openai_clip import read_clip_state_dict
from otseg.cli import main
from otseg.formats.class_embeddings import load_class_embeddings
d = Path({str(tmp_path)!r})
for read, name in ((load_model, "a.pt"), (read_clip_state_dict, "b.pt"), (load_model, "c.pt"),
                   (load_class_embeddings, "d.npy")):
    try:
        read(d / name)
    except ValueError as e:
        print("REFUSED", name, str(e).count(chr(10)))
"""
    out = run_bounded(code, extra_bytes=256 * 2**20)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:4] == [f"REFUSED {n} 0" for n in ("a.pt", "b.pt", "c.pt", "d.npy")], out.stdout


def test_class_embeddings_declaring_an_impossible_shape_are_refused_from_the_header(tmp_path: Path) -> None:
    ok = npy_declaring(tmp_path / "ok.npy", (2, 1, 8), bytes(32))
    assert tuple(load_class_embeddings(ok).shape) == (2, 1, 8)
    cases = {(5000, 1, 8): "K = 5,000 (at most 4,096)", (4, 1, 8): "holds 32 bytes of data", (16,): "(K, N, D)"}
    for declared, expected in cases.items():
        bad = npy_declaring(tmp_path / "bad.npy", declared, bytes(32))
        with pytest.raises(ValueError) as info:
            load_class_embeddings(bad)
        _one_line(info.value, str(bad), expected)
    save_file({"class_embeddings": torch.zeros(1, 300, 8)}, str(tmp_path / "e.safetensors"))
    with pytest.raises(ValueError) as info:
        load_class_embeddings(tmp_path / "e.safetensors")
    _one_line(info.value, "e.safetensors", "N = 300 (at most 256)")
