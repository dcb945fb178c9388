"""`Predictor.predict` holds about 20 bytes a pixel beyond the model (the image, its decode, the label map), so
that a 64-megapixel image, the default cap, predicts within 2 GB (`bench/predict_memory.py` measures it: 1.24 GB
peak RSS, against 4.96 GB for the (K, H, W) resize it replaces). Checked here on 8 megapixels in a child whose
address space may grow by 240 MB: the formulation before grew by 314 MB there (about 40 bytes a pixel)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import otseg.model.labels as labels_module
from conftest import make_tiny_model
from otseg import Predictor
from otseg.image_io import MAX_SIDE, read_image
from otseg.model.labels import upsampled_argmax
from test_predictor_bounded_images import write_png_header

CHILD = """
import sys
sys.path.insert(0, {formats!r})
import numpy as np
import pytest
from otseg import Predictor
from crafted import limit_memory_growth
predictor = Predictor.from_pretrained("demo", progress=False)
predictor.predict(np.zeros((64, 64, 3), np.uint8))  # first-call allocations (threads, caches) before the limit
limit_memory_growth({extra})
labels = predictor.predict({image!r}).labels
print("LABELS", labels.dtype, labels.shape, int(labels.sum()))
"""


def test_an_8_megapixel_image_predicts_within_240_mb_of_growth(tmp_path: Path) -> None:
    side = 2800
    y = (np.arange(side) // 500 % 2).astype(np.uint8)[:, None]
    x = (np.arange(side) // 700 % 3).astype(np.uint8)[None, :]
    rgb = np.stack(np.broadcast_arrays(y * 200 + x * 20, x * 80 + 0 * y, (y ^ (x & 1)) * 150), -1)
    image = tmp_path / "large.png"
    Image.fromarray(rgb.astype(np.uint8)).save(image, compress_level=1)
    formats = str(Path(__file__).resolve().parent)  # tests/, where crafted.py lives
    code = CHILD.format(formats=formats, extra=240 * 2**20, image=str(image))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"LABELS int64 ({side}, {side})" in out.stdout


def test_the_in_place_label_map_is_the_full_resize_argmax_bit_for_bit(monkeypatch) -> None:
    torch.manual_seed(0)
    low = torch.rand(7, 9, 13)
    low[4] = low[2]  # a tie: the lower index wins, as argmax
    low[5, :3] = -1e30
    reference = F.interpolate(low[None], size=(41, 50), mode="bilinear", align_corners=False)[0].argmax(0)
    for chunk in (41 * 50, 3 * 41 * 50, 10**9):  # one channel, three, all at a time
        monkeypatch.setattr(labels_module, "_CHUNK_ELEMENTS", chunk)
        labels = upsampled_argmax(low, (41, 50))
        assert labels.dtype == torch.int64 and torch.equal(labels, reference)


def test_a_side_over_the_limit_is_refused_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "strip.png"
    write_png_header(path, MAX_SIDE + 1, 2)  # 131 thousand pixels: under the pixel cap, over the side limit
    with pytest.raises(ValueError) as info:
        read_image(path)
    msg = str(info.value)
    assert str(path) in msg and f"{MAX_SIDE + 1}x2" in msg and "65,535" in msg and "\n" not in msg


def test_running_out_of_memory_in_the_model_is_not_called_unreadable(tmp_path: Path, monkeypatch) -> None:

    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((64, 48, 3), np.uint8)).save(image)
    predictor = Predictor(make_tiny_model())

    def exhausted(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried")

    monkeypatch.setattr(predictor.model, "predict_scores", exhausted)
    with pytest.raises(MemoryError) as info:
        predictor.predict(image)
    msg = str(info.value)
    assert str(image) in msg and "out of memory segmenting this 48x64 image" in msg and "was read" in msg
    assert "\n" not in msg

    def broken(*args, **kwargs):
        raise RuntimeError("a shape error inside the model")

    monkeypatch.setattr(predictor.model, "predict_scores", broken)
    with pytest.raises(RuntimeError, match="shape error"):  # other errors are not dressed up as memory
        predictor.predict(image)


def test_the_label_map_stays_on_the_scores_device() -> None:
    """Evaluation passes GPU scores: every buffer is made on their device (the meta device stands in for CUDA here:
    mixing it with a CPU tensor fails as CUDA would)."""
    labels = upsampled_argmax(torch.empty(3, 4, 5, device="meta"), (8, 10))
    assert labels.device.type == "meta" and labels.dtype == torch.int64 and tuple(labels.shape) == (8, 10)
