"""bf16 against float32 inference (`precision="bf16"`: the image tower under bfloat16 autocast, the head and the
scores in float32), in one run: speed ratio, label agreement and score differences.

Two models:

* the demo model (`Predictor.from_pretrained("demo")`, trained weights): the trained-weights check. Its test set
  (the demo world's 200 test images, seed 0) is scored at both precisions with `evaluate`, the reference protocol,
  so the mIoU(S), mIoU(U) and hIoU of both are printed; pixel labels and scores are compared image by image.
* a full-size OTSeg+ (CLIP ViT-B/16 image tower, voc12-inductive preset, random weights: no CLIP weights here) on
  random 512x512 images (one sliding window each).

Times are medians over rounds that run both precisions in turn (so that the machine's load hits both alike),
process CPU time and wall clock; one thread. The script also says whether this CPU has bfloat16 units (oneDNN's
report): where it has none, bf16 is emulated and slower.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/precision.py [--images 200] [--full-images 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from otseg import Predictor
from otseg.benchmark import _build
from otseg.demo.presets import DemoSettings
from otseg.demo.table import results_row
from otseg.demo.training import demo_datasets
from otseg.demo.world import world_dir
from otseg.eval.evaluate import evaluate, upsampled_argmax
from otseg.model.precision import PRECISIONS, Precision, cpu_has_native_bf16
from otseg.model.segmentor import OTSeg


def _interleaved(fns: dict[Precision, Callable[[], Any]], repeats: int) -> dict[Precision, tuple[float, float]]:
    """Median (CPU seconds, wall seconds) of each function, run in turn for `repeats` rounds after one warm-up."""
    cpu: dict[Precision, list[float]] = {p: [] for p in fns}
    wall: dict[Precision, list[float]] = {p: [] for p in fns}
    order = list(fns)
    for r in range(repeats + 1):
        for p in order if r % 2 == 0 else order[::-1]:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[p]()
            if r:
                cpu[p].append(time.process_time() - c0)
                wall[p].append(time.perf_counter() - t0)
    return {p: (statistics.median(cpu[p]), statistics.median(wall[p])) for p in fns}


def _scorer(model: OTSeg, images: list[torch.Tensor], precision: Precision) -> Callable[[], None]:
    def run() -> None:
        for image in images:
            model.predict_scores(image[None], precision=precision)

    return run


def _compare(model: OTSeg, images: list[torch.Tensor], sizes: list[tuple[int, int]]) -> dict[str, float]:
    """Label agreement (pixels, at each image's original size) and score differences of bf16 against float32."""
    same = total = 0
    largest = 0.0
    abs_sum = 0.0
    count = 0
    for image, size in zip(images, sizes, strict=True):
        full = model.predict_scores(image[None], precision="float32")[0]
        half = model.predict_scores(image[None], precision="bf16")[0]
        same += int((upsampled_argmax(full, size) == upsampled_argmax(half, size)).sum())
        total += size[0] * size[1]
        diff = (full - half).abs()
        largest = max(largest, float(diff.max()))
        abs_sum += float(diff.sum())
        count += diff.numel()
    return {"agreement": same / total, "max_diff": largest, "mean_diff": abs_sum / count}


def _speed_line(name: str, times: dict[Precision, tuple[float, float]], per: str) -> str:
    (c32, w32), (c16, w16) = times["float32"], times["bf16"]
    return f"| {name} | {c32:.3f} / {w32:.3f} | {c16:.3f} / {w16:.3f} | {c32 / c16:.2f}x | {w32 / w16:.2f}x | {per} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="demo test images scored (default: all 200)")
    p.add_argument("--full-images", type=int, default=3, help="random 512x512 images for the full-size model")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up)")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(
        f"CPU bfloat16 units (oneDNN): {'yes' if cpu_has_native_bf16() else 'no'}; torch {torch.__version__}; 1 thread"
    )

    # ---- the demo model, trained weights
    demo = Predictor.from_pretrained("demo", progress=False).model
    settings = DemoSettings.full(0)
    _, val_set = demo_datasets(settings, world_dir(settings.world))
    val_set.samples = val_set.samples[: args.images]
    samples = [val_set[i] for i in range(len(val_set))]
    images = [s["image"] for s in samples]
    sizes = [tuple(s["label"].shape[-2:]) for s in samples]
    metrics = {
        precision: results_row("otseg+", "inductive", evaluate(demo, val_set, progress=False, precision=precision))
        for precision in PRECISIONS
    }
    demo_cmp = _compare(demo, images, sizes)
    timed = images[: min(20, len(images))]
    demo_times = _interleaved({pr: _scorer(demo, timed, pr) for pr in PRECISIONS}, args.repeats)
    demo_times = {pr: (c / len(timed), w / len(timed)) for pr, (c, w) in demo_times.items()}

    # ---- a full-size model, random weights
    full = _build("voc12-inductive", {}, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    full_images = [torch.randn(3, 512, 512, generator=g) for _ in range(args.full_images)]
    full_cmp = _compare(full, full_images, [(512, 512)] * len(full_images))
    full_times = _interleaved({pr: _scorer(full, full_images[:1], pr) for pr in PRECISIONS}, args.repeats)

    print("\nspeed, seconds per image (CPU / wall), medians of interleaved rounds:")
    print("| model | float32 | bf16 | bf16 speed-up (CPU) | (wall) | images |")
    print("|---|---:|---:|---:|---:|---|")
    print(_speed_line("demo (trained)", demo_times, f"{len(timed)} demo test images, {demo.config.crop_size} px crops"))
    print(_speed_line("full-size OTSeg+ (random weights)", full_times, "one 512x512 image (one window)"))
    print("\nagreement of bf16 with float32:")
    print("| model | pixels with the same label | max abs score difference | mean abs score difference | images |")
    print("|---|---:|---:|---:|---|")
    for name, cmp_, what in (
        ("demo (trained)", demo_cmp, f"{len(images)} demo test images"),
        ("full-size OTSeg+ (random weights)", full_cmp, f"{len(full_images)} random 512x512 images"),
    ):
        print(
            f"| {name} | {100 * cmp_['agreement']:.3f} % | {cmp_['max_diff']:.2e} | {cmp_['mean_diff']:.2e} | {what} |"
        )
    print(f"\ndemo model on its {len(val_set)} test images (the reference protocol, `evaluate`):")
    print("| precision | mIoU(S) | mIoU(U) | hIoU |")
    print("|---|---:|---:|---:|")
    for precision, row in metrics.items():
        print(f"| {precision} | {row['miou_seen']:.2f} | {row['miou_unseen']:.2f} | {row['hiou']:.2f} |")


if __name__ == "__main__":
    main()
