"""A finished demo training job's results on disk, so that an interrupted `otseg demo` (Ctrl-C, a crash, a closed
laptop) reuses the jobs it finished instead of training them again.

A job's results (`otseg.demo.jobs.run_job`: its table rows, rows without the seen-class bias, per-class IoU, held-out
curve, timings and the panel images' label maps) are written as `result.json` in the job's training folder once the
job has finished. The file records a key (the job and every setting that determines its numbers); it is reused only
when the key matches exactly, and it is read only if it is small: anything else means "train again".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from otseg.utils import atomic_write_text

__all__ = ["JOB_RESULT", "MAX_JOB_RESULT_BYTES", "load_job_result", "save_job_result"]

JOB_RESULT = "result.json"
# A job's file holds a few table rows, 16 classes' IoU, a curve and a few 64 px label maps: well under 1 MB. The
# bound keeps a damaged or foreign file from being read into memory whole.
MAX_JOB_RESULT_BYTES = 16 * 2**20


def _plain(key: Mapping[str, Any]) -> Any:
    """The key as JSON would give it back (tuples become lists), so that a stored key compares equal."""
    return json.loads(json.dumps(key))


def save_job_result(folder: Path, key: Mapping[str, Any], result: Mapping[str, Any]) -> Path:
    """Write a finished job's `result` (as `run_job` returns it) to `folder/result.json`, atomically."""
    predictions = [
        {"method": method, "setting": setting, "labels": [np.asarray(m, dtype=np.uint8).tolist() for m in maps]}
        for (method, setting), maps in result["predictions"].items()
    ]
    payload = {
        "key": _plain(key),
        "rows": result["rows"],
        "rows_bias0": result["rows_bias0"],
        "per_class": result["per_class"],
        "curve": [[int(step), float(value)] for step, value in result["curve"]],
        "timings": result["timings"],
        "predictions": predictions,
    }
    path = folder / JOB_RESULT
    atomic_write_text(path, json.dumps(payload) + "\n")
    return path


def load_job_result(folder: Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The results of a job that finished in `folder` with exactly this `key`, in `run_job`'s form; None when
    there are none, they were written for other settings, or the file is too large or not what `save_job_result`
    writes."""
    path = folder / JOB_RESULT
    try:
        if not path.is_file() or path.stat().st_size > MAX_JOB_RESULT_BYTES:
            return None
        payload = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or payload.get("key") != _plain(key):
            return None
        predictions: dict[tuple[str, str], list[np.ndarray]] = {}
        for entry in payload["predictions"]:
            maps = [np.asarray(labels) for labels in entry["labels"]]
            if any(m.ndim != 2 or m.dtype.kind not in "iu" or m.min() < 0 or m.max() > 255 for m in maps):
                return None
            predictions[(str(entry["method"]), str(entry["setting"]))] = [m.astype(np.uint8) for m in maps]
        curve = [(int(step), float(value)) for step, value in payload["curve"]]
        rows, rows_bias0 = payload["rows"], payload["rows_bias0"]
        per_class, timings = payload["per_class"], payload["timings"]
        if not (isinstance(rows, list) and isinstance(rows_bias0, list) and all(isinstance(r, dict) for r in rows)):
            return None
        if not (isinstance(per_class, dict) and isinstance(timings, dict)):
            return None
        if not all(math.isfinite(value) for _, value in curve):
            return None
    except (OSError, ValueError, TypeError, KeyError, OverflowError):
        return None
    return {
        "rows": rows,
        "rows_bias0": rows_bias0,
        "per_class": per_class,
        "curve": curve,
        "timings": timings,
        "predictions": predictions,
    }
