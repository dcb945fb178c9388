"""Peak memory of `Predictor.predict` on one large image (default 8000 x 8000 = 64 megapixels, the default pixel
cap), against the formulation it replaces, each in a fresh process (peak RSS, `ru_maxrss`):

- `load`: the built-in demo model loaded, nothing predicted (what every mode starts from);
- `predict`: `Predictor.predict(path)`: the image read, resized, segmented, and its (H, W) label map built
  (`otseg.eval.evaluate.upsampled_argmax`: one channel at a time, in place);
- `full-resize`: the same image and scores, the label map as `F.interpolate(scores, (H, W)).argmax(1)`, the
  (K, H, W) formulation `upsampled_argmax` reproduces bit for bit (the label maps' SHA-256 are compared).

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/predict_memory.py [--side 8000] [--skip-reference]

Prints one JSON object (MB = 2**20 bytes). CPU figures: the same tensors a GPU would hold for the label map, minus
the allocator's caching.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_image(path: Path, side: int) -> None:
    """A side x side RGB PNG of large flat blocks (compresses to about 1 MB, decodes to side*side*3 bytes)."""
    y = (np.arange(side) // 500 % 2).astype(np.uint8)[:, None]
    x = (np.arange(side) // 700 % 3).astype(np.uint8)[None, :]
    rgb = np.stack(np.broadcast_arrays(y * 200 + x * 20, x * 80 + 0 * y, (y ^ (x & 1)) * 150), -1).astype(np.uint8)
    Image.fromarray(rgb).save(path, compress_level=1)


def child(mode: str, image: str) -> dict[str, object]:
    import torch
    import torch.nn.functional as F

    from otseg import Predictor
    from otseg.image_io import read_image

    predictor = Predictor.from_pretrained("demo", progress=False)
    loaded = _peak_mb()
    if mode == "load":
        return {"peak_mb": round(loaded, 1)}
    start = time.perf_counter()
    if mode == "predict":
        labels = predictor.predict(image).labels
    else:
        rgb = read_image(image)
        _, classes = predictor._classes_for(None)
        with torch.no_grad():
            scores = predictor.model.predict_scores(predictor.preprocess(rgb), classes=classes)
        full = F.interpolate(scores, size=rgb.shape[:2], mode="bilinear", align_corners=False)
        labels = full.argmax(1)[0].numpy()
    seconds = time.perf_counter() - start
    return {
        "peak_mb": round(_peak_mb(), 1),
        "seconds": round(seconds, 1),
        "labels_sha256": hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", type=int, default=8000, help="the image is side x side pixels (default 8000)")
    p.add_argument("--skip-reference", action="store_true", help="do not run the (K, H, W) formulation")
    p.add_argument("--child", nargs=2, metavar=("MODE", "IMAGE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    modes = ["load", "predict"] + ([] if args.skip_reference else ["full-resize"])
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "large.png"
        make_image(image, args.side)
        out: dict[str, object] = {"image": f"{args.side}x{args.side}", "pixels": args.side * args.side}
        for mode in modes:
            run = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(image)], capture_output=True, text=True, check=True
            )
            out[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    load = out["load"]["peak_mb"]  # type: ignore[index]
    pred = out["predict"]["peak_mb"]  # type: ignore[index]
    out["predict_above_load_mb"] = round(pred - load, 1)
    if "full-resize" in out:
        ref = out["full-resize"]
        out["same_labels"] = ref["labels_sha256"] == out["predict"]["labels_sha256"]  # type: ignore[index]
        out["reference_above_load_mb"] = round(ref["peak_mb"] - load, 1)  # type: ignore[index]
        out["ratio_above_load"] = round((pred - load) / (ref["peak_mb"] - load), 3)  # type: ignore[index]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
