"""`otseg prepare` on hostile downloads: every declared size is checked before anything is decompressed or
allocated, every bad value is one line naming the file, the member or JSON path and the value (exit status 2), and
nothing is written for it (`otseg.prepare.common`, `otseg.prepare.matlab`, `voc12`, `context59`, `coco`)."""

from __future__ import annotations

import io
import json
import time
import zipfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hostile_downloads import (
    mat_with_empty_cells,
    mat_with_segmentation,
    png_header_only,
    tgz_with_pax_header,
    tgz_with_zero_member,
)
from official_downloads import make_coco, make_context, make_sbd, make_voc2012

from crafted import run_bounded
from otseg.cli import main
from otseg.prepare import common
from otseg.prepare.common import MAX_BYTES_IN_FLIGHT, Job, run_jobs
from otseg.prepare.context59 import decode_rle, render_mask
from otseg.prepare.matlab import MatLimits, check_mat_sizes

pytest.importorskip("scipy")


def _prepare(dataset: str, src: Path, root: Path, *extra: str) -> int:
    return main(["prepare", dataset, "--src", str(src), "--data-root", str(root), "--no-progress", "--skip-checksum",
                 *extra])  # fmt: skip


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


# ------------------------------------------------------------------------------------------------ SBD .mat
def test_a_mat_declaring_a_huge_map_is_refused_from_its_header(tmp_path: Path, capsys) -> None:
    src, root = tmp_path / "downloads", tmp_path / "data"
    voc = make_voc2012(src, archive=True)
    make_sbd(src, voc, archive=False)
    bad = src / "benchmark_RELEASE" / "dataset" / "cls" / f"{voc['others'][0]}.mat"
    bad.write_bytes(mat_with_segmentation(6000, 5000))  # 30 megapixels in 30 KB
    assert _prepare("voc12", src, root, "--workers", "2") == 2
    _one_error_line(capsys, f"cls/{bad.name}", "GTcls.Segmentation is 6000x5000", "over 4,096")
    assert not [f for f in _files(root) if f.endswith(f"{bad.stem}.png")]
    assert {p.name for p in tmp_path.iterdir()} == {"downloads", "data"}  # nothing written anywhere else


def test_a_mat_of_millions_of_empty_arrays_is_refused_at_once(tmp_path: Path, capsys) -> None:
    """4 million empty matrices in GTcls.Boundaries (a 57 KB file): each cost the header walk a copy of its
    decompression buffer (the walk ran for minutes) and would cost scipy an object; refused after 65,536 arrays."""
    src, root = tmp_path / "downloads", tmp_path / "data"
    voc = make_voc2012(src, archive=True)
    make_sbd(src, voc, archive=False)
    stem = voc["others"][0]
    (src / "benchmark_RELEASE" / "dataset" / "cls" / f"{stem}.mat").write_bytes(mat_with_empty_cells(4096, 1000))
    start = time.perf_counter()
    assert _prepare("voc12", src, root, "--workers", "0") == 2
    assert time.perf_counter() - start < 20
    _one_error_line(capsys, f"cls/{stem}.mat", "GTcls.Boundaries{", "more than 65,536 arrays in one file")
    limits = MatLimits(max_side=4096, max_elements=4096 * 4096)
    assert check_mat_sizes(mat_with_empty_cells(3800, 16), limits) > 0  # 64,603 arrays: within the limit
    start = time.perf_counter()
    check_mat_sizes(mat_with_segmentation(2000, 2000), limits)  # 4 MB of data: skipped without quadratic copies
    assert time.perf_counter() - start < 5


def test_the_mat_header_walk_accepts_what_scipy_writes_and_bounds_the_rest() -> None:
    from scipy.io import savemat

    limits = MatLimits(max_side=64, max_elements=64 * 64)
    for compress in (True, False):
        buf = io.BytesIO()
        cells = np.empty((2, 1), dtype=object)
        cells[0, 0], cells[1, 0] = np.zeros((3, 4)), "text"
        savemat(buf, {"GTcls": {"Segmentation": np.ones((40, 50), np.uint8), "B": cells}}, do_compression=compress)
        assert check_mat_sizes(buf.getvalue(), limits) >= 2000
    with pytest.raises(ValueError, match=r"GTcls\.Segmentation is 65x10: a side over 64"):
        check_mat_sizes(mat_with_segmentation(65, 10), limits)
    with pytest.raises(ValueError, match=r"GTcls\.Segmentation is 64x65 = 4,160 elements, over the limit of 4,096"):
        check_mat_sizes(mat_with_segmentation(64, 65), MatLimits(max_side=100, max_elements=64 * 64))
    with pytest.raises(ValueError, match="truncated"):
        check_mat_sizes(mat_with_segmentation(8, 8)[:-20], limits)


# ------------------------------------------------------------------------------------------------ archives
def test_a_member_over_the_size_limit_is_refused_unread(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(common, "MAX_MEMBER_BYTES", 1 << 20)
    src, root = tmp_path / "downloads", tmp_path / "data"
    make_voc2012(src, archive=True)
    tgz_with_zero_member(src / "benchmark.tgz", {"benchmark_RELEASE/dataset/train.txt": (1 << 20) + 1})
    assert _prepare("voc12", src, root) == 2
    _one_error_line(capsys, "benchmark.tgz", "train.txt has 1,048,577 bytes")


def test_a_pax_header_over_the_size_limit_is_refused_unread(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(common, "MAX_MEMBER_BYTES", 1 << 20)
    src, root = tmp_path / "downloads", tmp_path / "data"
    make_voc2012(src, archive=True)
    tgz_with_pax_header(src / "benchmark.tgz", 2 << 20)
    assert _prepare("voc12", src, root) == 2
    _one_error_line(capsys, "benchmark.tgz", "a record of 2,097,152 bytes")


def test_a_zip_member_is_inflated_no_further_than_its_declared_size(tmp_path: Path, capsys) -> None:
    """A member declaring 1,000 bytes whose deflate stream holds 64 MiB: zipfile's own read would inflate it all."""
    import tracemalloc
    import zlib

    src, root = tmp_path / "downloads", tmp_path / "data"
    path = src / "ADEChallengeData2016.zip"
    src.mkdir()
    name = "ADEChallengeData2016/images/training/ADE_train_00000001.jpg"
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = b"".join(z.compress(bytes(1 << 20)) for _ in range(64)) + z.flush()
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info, b"x" * 1000)
    data = bytearray(path.read_bytes())  # swap in the large stream; both headers keep declaring 1,000 bytes
    local = data.find(name.encode()) - 30
    old = int.from_bytes(data[local + 18 : local + 22], "little")
    start = local + 30 + len(name)
    central = bytearray(data[start + old :])
    entry = central.find(name.encode()) - 46  # the central directory's record of the member
    central[entry + 20 : entry + 24] = len(stream).to_bytes(4, "little")
    end = central.rfind(b"PK\x05\x06")
    offset = int.from_bytes(central[end + 16 : end + 20], "little") + len(stream) - old
    central[end + 16 : end + 20] = offset.to_bytes(4, "little")
    data[local + 18 : local + 22] = len(stream).to_bytes(4, "little")
    path.write_bytes(bytes(data[:start]) + stream + bytes(central))
    tracemalloc.start()
    try:
        assert _prepare("ade20k", src, root, "--workers", "0") == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _one_error_line(capsys, "ADEChallengeData2016.zip", "Bad CRC-32", "ADE_train_00000001.jpg")
    assert peak < 16 << 20, peak


def test_a_bzip2_zip_member_is_refused_unread(tmp_path: Path, capsys) -> None:
    src, root = tmp_path / "downloads", tmp_path / "data"
    src.mkdir()
    with zipfile.ZipFile(src / "ADEChallengeData2016.zip", "w", compression=zipfile.ZIP_BZIP2) as zf:
        zf.writestr("ADEChallengeData2016/images/training/ADE_train_00000001.jpg", b"x" * 100)
    assert _prepare("ade20k", src, root, "--workers", "0") == 2
    _one_error_line(capsys, "ADEChallengeData2016.zip", "ADE_train_00000001.jpg is compressed with method 12")


@pytest.mark.parametrize(("length", "needle"), [(2 << 20, "a record of 2,097,664 bytes, more than any header"),
                                                (5000, "a member named by 5,000 characters")])  # fmt: skip
def test_a_tar_long_name_is_bounded(tmp_path: Path, capsys, length: int, needle: str) -> None:
    """A GNU long name is a header record: read in one call before its member, under a 1 MiB cap."""
    import tarfile

    src, root = tmp_path / "downloads", tmp_path / "data"
    voc = make_voc2012(src, archive=True)
    make_sbd(src, voc, archive=False)
    with tarfile.open(src / "VOCtrainval_11-May-2012.tar", "a", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("VOCdevkit/VOC2012/JPEGImages/" + "a" * (length - 33) + ".jpg")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"abcd"))
    assert _prepare("voc12", src, root, "--workers", "0") == 2
    line = _one_error_line(capsys, "VOCtrainval_11-May-2012.tar", needle)
    assert len(line) < 1000


class _DeferredPool:
    """Stands in for ProcessPoolExecutor: jobs run only when `wait` (or `result`) asks, so that the bytes of the
    jobs submitted and not yet finished can be observed."""

    def __init__(self, max_workers: int) -> None:
        self.open: dict[Future[Any], Job] = {}
        self.peak = 0

    def submit(self, fn, job: Job) -> Future[Any]:
        fut: Future[Any] = Future()
        self.open[fut] = job
        self.peak = max(self.peak, sum(j.cost for j in self.open.values()))
        original = fut.result

        def result(timeout: float | None = None) -> Any:
            self.finish(fut)
            return original(timeout)

        fut.result = result  # type: ignore[method-assign]
        return fut

    def finish(self, fut: Future[Any]) -> None:
        job = self.open.pop(fut, None)
        if job is not None:
            fut.set_result(job.cost)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def test_run_jobs_bounds_the_bytes_in_flight_not_the_job_count(monkeypatch) -> None:
    pools: list[_DeferredPool] = []

    def pool(max_workers: int) -> _DeferredPool:
        pools.append(_DeferredPool(max_workers))
        return pools[-1]

    def wait(pending, return_when):
        first = next(iter(pending))
        pools[-1].finish(first)
        return {first}, set(pending) - {first}

    monkeypatch.setattr(common, "ProcessPoolExecutor", pool)
    monkeypatch.setattr(common, "wait", wait)
    big = [Job(Path(f"b{i}"), len, b"", cost=MAX_BYTES_IN_FLIGHT // 3) for i in range(8)]
    assert len(run_jobs(big, workers=4, desc="x", progress=False)) == 8
    assert pools[-1].peak <= MAX_BYTES_IN_FLIGHT  # before: 16 jobs (4 per worker) of any size
    huge = [Job(Path(f"h{i}"), len, b"", cost=2 * MAX_BYTES_IN_FLIGHT) for i in range(3)]
    assert len(run_jobs(huge, workers=4, desc="x", progress=False)) == 3
    assert pools[-1].peak == 2 * MAX_BYTES_IN_FLIGHT  # one at a time, whatever its size
    small = [Job(Path(f"s{i}"), len, b"", cost=1000) for i in range(100)]
    assert len(run_jobs(small, workers=2, desc="x", progress=False)) == 100
    assert pools[-1].peak == 100 * 1000  # many small ones at once: the count is not what is bounded


# ------------------------------------------------------------------------------------------------ Context JSON
def _context_with(tmp_path: Path, edit) -> tuple[Path, Path]:
    src, root = tmp_path / "downloads", tmp_path / "data"
    make_context(src, archive=False)
    path = src / "trainval_merged.json"
    merged = json.loads(path.read_text())
    edited = edit(merged)
    path.write_text(edited if isinstance(edited, str) else json.dumps(merged))
    return src, root


def _first_rle(merged: dict) -> dict:
    return next(a for a in merged["annos_segmentation"] if isinstance(a["segmentation"]["counts"], list))


def _image(**changes: Any):
    return lambda m: m["images"][0].update(changes)


def _annotation(**changes: Any):
    return lambda m: m["annos_segmentation"][0].update(changes)


def _rle(**changes: Any):
    return lambda m: m["annos_segmentation"][0]["segmentation"].update(changes)


def _run(index: int, value: Any):
    return lambda m: _first_rle(m)["segmentation"]["counts"].__setitem__(index, value)


HOSTILE_JSON = {
    "15000-square": (_image(height=15000, width=15000), ["images[0].height = 15000", "1..4,096"]),
    "height-null": (_image(height=None), ["images[0].height = None"]),
    "height-abc": (_image(height="abc"), ["images[0].height = 'abc'"]),
    "height-negative": (_image(height=-5), ["images[0].height = -5"]),
    "width-over": (_image(height=4000, width=4100), ["images[0].width = 4100"]),
    "file-name-null": (_image(file_name=None), ["images[0].file_name = 'None'"]),
    "category-1e30": (_annotation(category_id=10**30), ["annos_segmentation[0].category_id = 1.000e+30"]),
    "size-5": (_rle(size=5), ["annos_segmentation[0].segmentation.size = 5"]),
    "size-null": (_rle(size=None), [".segmentation.size = None"]),
    "size-3": (_rle(size=[64, 80, 3]), [".segmentation.size = [64, 80, 3]"]),
    "size-other": (_rle(size=[64, 81]), [".segmentation.size = [64, 81]", "64x80"]),
    "counts-2**70": (_run(1, 2**70), [".segmentation.counts[1] = 1.181e+21"]),
    "counts-1e300": (_run(1, 1e300), [".segmentation.counts[1] = 1e+300"]),
    "counts-dict": (_rle(counts={"a": 1}), [".segmentation.counts is a dict"]),
    "polygons": (_annotation(segmentation=[[1, 2, 3]]), ["annos_segmentation[0].segmentation"]),
    "image-str": (lambda m: m["images"].__setitem__(0, "x"), ["images[0] is a str"]),
    "nested": (lambda m: "[" * 100_000 + "]" * 100_000, ["nested too deep"]),
    "int-5000-digits": (
        lambda m: json.dumps(m).replace('"height": ', '"height": ' + "9" * 5000 + ', "x": ', 1),
        ["not valid JSON", "4300 digits"],
    ),
}


@pytest.mark.parametrize(("edit", "needles"), HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
def test_hostile_context_json_is_one_line_naming_the_json_path(tmp_path: Path, capsys, edit, needles) -> None:
    src, root = _context_with(tmp_path, edit)
    assert _prepare("context59", src, root, "--workers", "0") == 2
    _one_error_line(capsys, "trainval_merged.json", *needles)
    assert not root.exists() or not [f for f in _files(root) if f.endswith(".png")]
    assert {p.name for p in tmp_path.iterdir()} <= {"downloads", "data"}  # nothing written anywhere else


def test_rle_strings_with_impossible_runs_are_one_line() -> None:
    for counts, expected in [("P" * 14, "more than 13 characters"), ("P", "ends inside"), ("\x7f", "invalid")]:
        with pytest.raises(ValueError, match=expected) as info:
            decode_rle({"size": [4, 4], "counts": counts}, "f.json: annos_segmentation[3].segmentation")
        assert "f.json: annos_segmentation[3].segmentation.counts" in str(info.value)
    with pytest.raises(ValueError, match=r"f\.json\.counts\[1\] = 17: expected a whole number in 0\.\.16"):
        decode_rle({"size": [4, 4], "counts": [0, 17]}, "f.json")
    with pytest.raises(ValueError, match=r"run 3 is -2; a mask of 16 pixels holds runs of 0\.\.16"):
        decode_rle({"size": [4, 4], "counts": "211M"}, "f.json")  # runs 2, 1, 1, then a delta of -3 from 1
    labels = render_mask(4, 4, [(2, {"size": [4, 4], "counts": [0, 16]}), (1, {"size": [4, 4], "counts": [8, 8]})], "x")
    assert labels.dtype == np.uint8 and labels[:, :2].tolist() == [[1, 1]] * 4 and labels[:, 2:].max() == 0


# ------------------------------------------------------------------------------------------------ COCO-Stuff maps
def test_a_coco_map_that_is_an_icon_is_refused_undecoded(tmp_path: Path, capsys) -> None:
    """An ICO named .png declares 16x16 and holds an 8000x8000 PNG that PIL decodes at its own size."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 8000, 8000, 8, 0, 0, 0, 0)
    rows = zlib.compress(bytes(8001 * 8000), 9)  # 64 MB of zeros in 64 KB
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    icon = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + png
    src, root = tmp_path / "downloads", tmp_path / "data"
    coco = make_coco(src, archive=True)
    stem = next(s for (split, s) in coco["raw"] if split == "val2017")
    with zipfile.ZipFile(src / "stuffthingmaps_trainval2017.zip", "a") as zf:
        zf.writestr(f"val2017/{stem}0.png", icon)
    assert _prepare("coco", src, root, "--workers", "0") == 2
    _one_error_line(capsys, "stuffthingmaps_trainval2017.zip", f"val2017/{stem}0.png", "not a COCO-Stuff label map")


@pytest.mark.parametrize(("width", "height", "needle"), [(20000, 20000, "400000000 pixels"), (5000, 300, "5000x300")])
def test_a_coco_map_declaring_a_huge_size_is_refused_from_its_header(
    tmp_path: Path, capsys, width: int, height: int, needle: str
) -> None:
    """Over PIL's own bomb limit, and under it but over the label-map bounds: refused from the PNG header."""
    src, root = tmp_path / "downloads", tmp_path / "data"
    coco = make_coco(src, archive=True)
    stem = next(s for (split, s) in coco["raw"] if split == "val2017")
    with zipfile.ZipFile(src / "stuffthingmaps_trainval2017.zip", "a") as zf:
        zf.writestr(f"val2017/{stem}0.png", png_header_only(width, height))
    assert _prepare("coco", src, root, "--workers", "0") == 2
    _one_error_line(capsys, "stuffthingmaps_trainval2017.zip", f"val2017/{stem}0.png", needle)


# ------------------------------------------------------------------------------------------------ memory
def test_hostile_downloads_are_refused_within_200_mb(tmp_path: Path) -> None:
    """In a child whose address space may grow by 200 MB only (tests/crafted.py): a 130 KB .mat declaring
    12000 x 12000 (scipy would decompress and allocate 144 MB twice), a 300-byte JSON declaring a 15000 x 15000
    image (1.8 GB of ids before), and a 1.4 MB .tgz with a 300 MB pax header are each refused with one line."""
    cases = {}
    src = tmp_path / "sbd"
    voc = make_voc2012(src, archive=True)
    make_sbd(src, voc, archive=False)
    (src / "benchmark_RELEASE" / "dataset" / "cls" / f"{voc['others'][0]}.mat").write_bytes(
        mat_with_segmentation(12000, 12000)
    )
    cases["voc12"] = src
    cases["context59"], _ = _context_with(tmp_path / "ctx", lambda m: m["images"][0].update(height=15000, width=15000))
    src = tmp_path / "pax"
    make_voc2012(src, archive=True)
    tgz_with_pax_header(src / "benchmark.tgz", 300 << 20)
    cases["voc12 "] = src
    code = "from otseg.cli import main\n" + "".join(
        f"print('EXIT', main(['prepare', {d.strip()!r}, '--src', {str(s)!r}, '--data-root', {str(tmp_path / 'out')!r},"
        f" '--no-progress', '--skip-checksum', '--workers', '0']), flush=True)\n"
        for d, s in cases.items()
    )
    out = run_bounded("import scipy.io, otseg.prepare.voc12\n" + code, extra_bytes=200 * 2**20, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["EXIT", "2"] * 3, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 3 and "GTcls.Segmentation is 12000x12000" in lines[0], lines
    assert "images[0].height = 15000" in lines[1] and "a record of 314,572,800 bytes" in lines[2], lines
