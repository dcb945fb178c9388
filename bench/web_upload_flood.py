"""The web page under an upload flood (`docs/safety-inputs.md`): `otseg serve` (the demo model) in its own
process, with a cache folder of its own; N uploads of S MB sent T at a time to gradio's upload route. Measured:
the HTTP answers, the wall time, the largest and the final size of the cache folder (sampled every 20 ms), and
the server's peak resident memory (VmHWM). `--compare SRC` runs the same flood against another source tree
(e.g. the code before this change) in the same run.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/web_upload_flood.py [--uploads 30] [--mb 19] [--threads 8]
        [--compare /path/to/other/src]

Prints one JSON object per server.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def flood(src: str, uploads: int, mb: float, threads: int) -> dict[str, Any]:
    """Serve from source tree `src`, send the uploads, return the measurements."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="flood-cache-") as cache:
        env = {**os.environ, "PYTHONPATH": src, "GRADIO_TEMP_DIR": cache, "GRADIO_ANALYTICS_ENABLED": "False"}
        cmd = [sys.executable, "-m", "otseg", "serve", "--port", str(port)]
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(server.stdout or []), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 120
            while not any("press Ctrl+C" in ln for ln in lines):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start: {''.join(lines)}")
                time.sleep(0.2)
            payload = os.urandom(int(mb * 1e6))
            url = f"http://127.0.0.1:{port}/gradio_api/upload"
            largest = [0]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    largest[0] = max(largest[0], _folder_bytes(Path(cache)))
                    time.sleep(0.02)

            def upload(i: int) -> int:
                data = payload[:-8] + i.to_bytes(8, "little")  # distinct contents: distinct cache files
                with httpx.Client(timeout=300) as client:
                    return client.post(url, files={"files": (f"u{i}.bin", data)}).status_code

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            start = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                statuses = list(pool.map(upload, range(uploads)))
            seconds = time.perf_counter() - start
            time.sleep(0.5)
            done.set()
            sampler.join()
            final = _folder_bytes(Path(cache))
            return {
                "src": src,
                "uploads": uploads,
                "mb_each": mb,
                "threads": threads,
                "answers": {str(s): statuses.count(s) for s in sorted(set(statuses))},
                "seconds": round(seconds, 2),
                "cache_largest_mib": round(max(largest[0], final) / 2**20, 1),
                "cache_final_mib": round(final / 2**20, 1),
                "server_peak_rss_mib": round(_peak_rss_mib(server.pid), 1),
            }
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=30)
    parser.add_argument("--mb", type=float, default=19.0, help="megabytes per upload (default 19)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--compare", help="another source tree (its src/ folder) to flood the same way")
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parents[1] / "src")
    for src in [here] + ([args.compare] if args.compare else []):
        print(json.dumps(flood(src, args.uploads, args.mb, args.threads)), flush=True)


if __name__ == "__main__":
    main()
