"""Training samples per second per data-loading worker: the OpenCV backend of `otseg.data.transforms` against the
numpy restatement it replaced (`backend="numpy"`), in one run, and whether their outputs are identical.

Each sample is a generated VOC-shaped image (500 x 375 and its transpose, smooth colours with noise) with a blocky
label map of a few classes, sent through `TrainTransform` of the VOC preset's data config (random rescale to
0.5-2x of 2048x512, 512 crop, flip, photometric distortion, normalise, pad) with the same per-sample seed on both
backends, one sample of each in turn so that load on the machine hits both alike. Image decoding is not timed (it
is the same for both). One thread, as in a DataLoader worker (torch's and OpenCV's thread pools set to 1). The
time per step splits each backend's time into the pipeline's stages.

It also runs the OpenCV backend once more with OpenCV's HSV->RGB used whole (no row tails from the restatement,
as mmcv's `hsv2bgr` calls it) and counts the values of the final image tensors that differ from the numpy
restatement's.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/data_pipeline.py [--samples 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import cv2
import numpy as np
import torch

from otseg.config import DataConfig
from otseg.data import pixel_ops
from otseg.data.transforms import BACKENDS, Backend, TrainTransform, to_tensors


def generated_sample(rng: np.random.Generator, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) uint8 label at VOC's usual shapes, 255 on a border as VOC's outlines."""
    h, w = (375, 500) if index % 2 == 0 else (500, 375)
    yy, xx = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 6.3, 3)
    base = np.stack([127 + 100 * np.sin(xx / (40 + 20 * c) + yy / 70 + phase[c]) for c in range(3)], axis=-1)
    image = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    blocks = rng.integers(0, 21, (3, 4))
    label = blocks[yy * 3 // h, xx * 4 // w].astype(np.uint8)
    label[::50] = 255
    return image, label


def _staged(transform: TrainTransform, image: np.ndarray, label: np.ndarray, seed: int) -> tuple[Any, dict[str, float]]:
    """The transform's steps one by one (the same calls as `transform(image, label, rng)`), timed per stage."""
    rng = np.random.default_rng(seed)
    stages: dict[str, float] = {}
    lab: np.ndarray | None = label
    for step in transform.augment_steps:
        c0 = time.process_time()
        image, lab = step(image, lab, rng)
        stages[type(step).__name__] = time.process_time() - c0
    c0 = time.process_time()
    image, lab = transform.normalize(image, lab)
    image, lab = transform.pad(image, lab)
    out = to_tensors(image, lab)
    stages["Normalize+Pad+tensors"] = time.process_time() - c0
    return out, stages


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=200, help="generated samples (default 200)")
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    config = DataConfig()  # the VOC preset's pipeline (data_config_for(voc12-inductive) gives the same fields)
    transforms = {b: TrainTransform(config, backend=b) for b in BACKENDS}
    rng = np.random.default_rng(0)
    samples = [generated_sample(rng, i) for i in range(args.samples)]
    order: tuple[Backend, ...] = ("numpy", "opencv")
    wall: dict[str, list[float]] = {b: [] for b in order}
    cpu: dict[str, list[float]] = {b: [] for b in order}
    stages: dict[str, dict[str, float]] = {b: {} for b in order}
    identical = 0
    for i, (image, label) in enumerate(samples):
        outputs = {}
        for backend in order if i % 2 == 0 else order[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            outputs[backend], parts = _staged(transforms[backend], image, label, seed=i)
            wall[backend].append(time.perf_counter() - t0)
            cpu[backend].append(time.process_time() - c0)
            for name, seconds in parts.items():
                stages[backend][name] = stages[backend].get(name, 0.0) + seconds
        (a_img, a_lab), (b_img, b_lab) = outputs["numpy"], outputs["opencv"]
        assert a_lab is not None and b_lab is not None
        identical += int(torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab))
    # OpenCV's HSV->RGB whole: with a tail width of 1, `width % 1 == 0` pixels of each row come from the numpy
    # restatement. (The fast-path check ran above, with the real tail width.)
    differing = values = largest = 0
    saved_tail = pixel_ops._HSV_TAIL
    pixel_ops._HSV_TAIL = 1
    try:
        for i, (image, label) in enumerate(samples):
            whole = transforms["opencv"](image, label, np.random.default_rng(i))[0]
            ours = transforms["numpy"](image, label, np.random.default_rng(i))[0]
            std = torch.tensor(config.std).reshape(3, 1, 1)
            levels = ((whole - ours) * std).abs().round()  # back to 0..255 levels
            differing += int((levels > 0).sum())
            values += levels.numel()
            largest = max(largest, int(levels.max()))
    finally:
        pixel_ops._HSV_TAIL = saved_tail
    # The staged calls are the transform's own: check once that they give what the transform gives.
    direct = transforms["opencv"](*samples[0], np.random.default_rng(0))
    staged, _ = _staged(transforms["opencv"], *samples[0], seed=0)
    assert torch.equal(direct[0], staged[0]) and direct[1] is not None and torch.equal(direct[1], staged[1])

    print(f"TrainTransform, VOC pipeline (crop {config.crop_size}), {args.samples} generated 500x375 samples, 1 thread")
    print(f"identical image and label tensors: {identical} of {args.samples} samples")
    print("| backend | samples / s per worker (CPU time) | (wall clock) | median ms / sample (CPU) |")
    print("|---|---:|---:|---:|")
    for backend in order:
        total_cpu, total_wall = sum(cpu[backend]), sum(wall[backend])
        print(
            f"| {backend} | {args.samples / total_cpu:.1f} | {args.samples / total_wall:.1f} "
            f"| {1e3 * statistics.median(cpu[backend]):.1f} |"
        )
    print(
        f"opencv / numpy: {sum(cpu['numpy']) / sum(cpu['opencv']):.2f}x the samples per second (CPU time), "
        f"{sum(wall['numpy']) / sum(wall['opencv']):.2f}x (wall clock)"
    )
    print(
        f"OpenCV's HSV->RGB used whole (as mmcv): {differing} of {values} values of the image tensors "
        f"({100 * differing / values:.3f} %) differ from the numpy restatement, by at most {largest} level(s)"
    )
    print("\nshare of each backend's CPU time per stage:")
    names = list(stages["numpy"])
    print("| stage | " + " | ".join(order) + " |")
    print("|---|" + "---:|" * len(order))
    for name in names:
        cells = [
            f"{100 * stages[b][name] / sum(stages[b].values()):.0f} % ({1e3 * stages[b][name] / args.samples:.1f} ms)"
            for b in order
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
