"""Sinkhorn benchmark (not a test): otseg's `sinkhorn` against the reference loop and against POT.

Prints, in one run, forward time, forward+backward time and peak memory at the OTSeg shapes (VOC / COCO, inference /
training), on random costs and on clustered "trained-like" costs that need many iterations, as ratios:

* ref  = the reference OTSeg loop (`decode_seg.py` L38-68), restated below as it is: the full (P, M, N) exponent
  rebuilt twice per iteration, `.item()` on the stopping statistic every iteration, autograd through every
  iteration;
* ours = `otseg.ops.sinkhorn(cost, 0.05)` with default settings (same stopping rule and iteration counts);
* POT  = `ot.batch.bregman_log_projection_batch` (POT's batched log-domain Sinkhorn, torch backend, autograd
  through the iterations), run for the same number of iterations as the reference (tol=0), since POT's own stopping
  rule (max marginal error, checked every 10 iterations) is a different one; and, forward only, POT's classic
  `ot.bregman.sinkhorn_log` called once per problem (it is not batched).

Every measurement runs in a fresh subprocess; its peak memory is the process's peak resident set size during the
first call minus its resident size just before (the peak is reset first through /proc/self/clear_refs; torch's
allocations are invisible to tracemalloc). The subprocess of the reference's training
measurement at COCO shapes can need 10+ GB: it runs under an address-space limit (--mem-limit-gb) and reports
"OOM" instead of swapping the machine to death.

Usage:
    python bench/sinkhorn_bench.py            # full run (~10 minutes on 1 CPU thread)
    python bench/sinkhorn_bench.py --quick    # fewer cases, no repeats (~3 minutes)
Options: --threads N (default 1: on a shared 2-core machine, 2 threads make every small op wait for a busy core,
which slows the reference loop 5x and adds noise), --clock cpu|wall (default: the process's CPU time with one
thread, which other processes' load does not inflate), --repeats, --mem-limit-gb, --only SHAPE.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

EPS = 0.05
MAX_ITER = 100
THRESH = 1e-6

# name: (images B, classes K, pixels M, prompts N, training?)
SHAPES: dict[str, tuple[int, int, int, int, bool]] = {
    "voc-infer": (1, 20, 1024, 6, False),
    "voc-train": (4, 15, 1024, 6, True),
    "coco-infer": (1, 171, 1024, 8, False),
    "coco-train": (4, 156, 1024, 8, True),
}
COSTS = ("random", "trained-like", "hard")


# ------------------------------------------------------------------------------------------------ cost generators
def make_cost(kind: str, shape: str, seed: int = 0):
    """(B*K, M, N) float32 cost 1 - cos, generated in blocks so that generation does not set the memory peak.

    random: pixels and prompts uniform on the unit sphere of R^512 (random-weight features: 3-6 iterations).
    trained-like: per problem, the pixels cluster (noise 0.1) around 2 centres, each a softmax(2 z)-weighted mix of
        that class's prompts, with random cluster sizes: the uniform prompt marginal fights the pixels' preference,
        so the loop needs ~55-80 iterations (the issue's "~76" at COCO training shapes).
    hard: the same with 4 centres and softmax(z): reaches the 100-iteration cap at COCO shapes.
    """
    import torch
    import torch.nn.functional as F

    b, k, m, n, _ = SHAPES[shape]
    p, d = b * k, 512
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, p, 16):
        q = min(16, p - start)
        prompts = F.normalize(torch.randn(q, n, d, generator=g), dim=-1)
        if kind == "random":
            pixels = F.normalize(torch.randn(q, m, d, generator=g), dim=-1)
        else:
            centres, temp = (2, 2.0) if kind == "trained-like" else (4, 1.0)
            w = torch.softmax(torch.randn(q, centres, n, generator=g) * temp, dim=-1)
            c = F.normalize(torch.einsum("qcn,qnd->qcd", w, prompts), dim=-1)
            assign = torch.randint(0, centres, (q, m), generator=g)
            pixels = c.gather(1, assign[:, :, None].expand(-1, -1, d))
            pixels = F.normalize(pixels + 0.1 * torch.randn(q, m, d, generator=g) / d**0.5, dim=-1)
        out.append(1.0 - torch.einsum("qmd,qnd->qmn", pixels, prompts))
    return torch.cat(out).contiguous()


# ------------------------------------------------------------------------------------------------ implementations
def reference_sinkhorn(cost, eps: float = EPS, max_iter: int = MAX_ITER, thresh: float = THRESH):
    """The reference OTSeg `Sinkhorn_log_exp_sum`, restated faithfully. Returns (plan, iterations)."""
    import torch

    p, m, n = cost.shape
    mu = torch.full((p, m), 1.0 / m, dtype=cost.dtype)
    nu = torch.full((p, n), 1.0 / n, dtype=cost.dtype)
    u = torch.zeros_like(mu)
    v = torch.zeros_like(nu)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        u0 = u
        k = (-cost + u.unsqueeze(2) + v.unsqueeze(1)) / eps
        u = eps * (torch.log(mu + 1e-8) - torch.logsumexp(k, dim=2)) + u
        k = (-cost + u.unsqueeze(2) + v.unsqueeze(1)) / eps
        v = eps * (torch.log(nu + 1e-8) - torch.logsumexp(k.transpose(-2, -1), dim=2)) + v
        err = (u - u0).abs().mean()
        if err.item() < thresh:
            break
    return torch.exp((-cost + u.unsqueeze(2) + v.unsqueeze(1)) / eps), it


def ours_sinkhorn(cost, **kwargs):
    from otseg.ops import record_sinkhorn_calls, sinkhorn

    with record_sinkhorn_calls() as calls:
        plan = sinkhorn(cost, EPS, **kwargs)
    return plan, calls[0].iterations


_POT_BACKEND = None


def _pot_backend():
    global _POT_BACKEND
    if _POT_BACKEND is None:
        from ot.backend import TorchBackend

        _POT_BACKEND = TorchBackend()  # slow to construct: built once, outside the timed region
    return _POT_BACKEND


def pot_batch_sinkhorn(cost, iterations: int):
    """POT's batched log-domain Sinkhorn for exactly `iterations` iterations (autodiff through them)."""
    import torch
    from ot.batch import bregman_log_projection_batch

    p, m, n = cost.shape
    a = torch.full((p, m), 1.0 / m, dtype=cost.dtype)
    b = torch.full((p, n), 1.0 / n, dtype=cost.dtype)
    res = bregman_log_projection_batch(
        -cost / EPS, a, b, nx=_pot_backend(), max_iter=iterations, tol=0.0, grad="autodiff"
    )
    return res["T"], iterations


def pot_loop_sinkhorn(cost, iterations: int):
    """POT's `ot.bregman.sinkhorn_log` (torch backend), one call per problem, `iterations` iterations each."""
    import ot
    import torch

    p, m, n = cost.shape
    a = torch.full((m,), 1.0 / m, dtype=cost.dtype)
    b = torch.full((n,), 1.0 / n, dtype=cost.dtype)
    plans = [
        ot.bregman.sinkhorn_log(a, b, cost[i], EPS, numItermax=iterations, stopThr=0.0, warn=False) for i in range(p)
    ]
    return torch.stack(plans), iterations


# ------------------------------------------------------------------------------------------------ one measurement
def _rss_mb(field: str) -> float:
    """VmRSS (current) or VmHWM (peak) of this process, in MB, from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak() -> float:
    """Reset the peak RSS to the current RSS (Linux: clear_refs 5) and return the current RSS in MB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # the peak stays the process's lifetime high-water mark: deltas are then a lower bound
    return _rss_mb("VmRSS")


def child(spec: dict) -> dict:
    """Runs in a fresh process: one implementation, one case, one mode ("fwd" or "fwdbwd"), one measure
    ("time": 1 + repeats runs, median; "memory": one run, peak RSS increase)."""
    import torch

    torch.set_num_threads(spec["threads"])
    cost = torch.load(spec["cost_file"], weights_only=True)  # generated by the parent: no generation peak here
    weights = torch.randn(cost.shape, generator=torch.Generator().manual_seed(1))
    impl, mode, iters = spec["impl"], spec["mode"], spec.get("iterations")
    kwargs = spec.get("kwargs", {})

    def run():
        c = cost.detach().requires_grad_(spec["training"])
        with torch.set_grad_enabled(spec["training"]):
            if impl == "ref":
                if kwargs.get("fixed_iters"):
                    plan, it = reference_sinkhorn(c, max_iter=kwargs["fixed_iters"], thresh=0.0)
                else:
                    plan, it = reference_sinkhorn(c)
            elif impl == "ours":
                plan, it = ours_sinkhorn(c, **kwargs)
            elif impl == "pot":
                plan, it = pot_batch_sinkhorn(c, iters)
            elif impl == "pot-loop":
                plan, it = pot_loop_sinkhorn(c, iters)
            else:
                raise ValueError(impl)
            if mode == "fwdbwd":
                (plan * weights).sum().backward()
        return plan.detach(), it

    # Load lazily-initialised kernels on a tiny problem, so that the baseline includes them.
    small = cost[:2, :64].contiguous()
    ours_sinkhorn(small)
    reference_sinkhorn(small)
    if impl.startswith("pot"):
        pot_batch_sinkhorn(small, 2)
        pot_loop_sinkhorn(small, 2)
    if spec["measure"] == "memory":
        base = _reset_peak()
        _, it = run()
        return {"peak_mb": _rss_mb("VmHWM") - base, "iterations": it}
    times, cpu_times = [], []
    for _ in range(1 + spec["repeats"]):
        t0, c0 = time.perf_counter(), time.process_time()
        plan, it = run()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        if sum(times) > spec["time_budget"]:
            break
    wall, cpu = statistics.median(times), statistics.median(cpu_times)
    result = {"time": cpu if spec["clock"] == "cpu" else wall, "wall": wall, "cpu": cpu, "iterations": it}
    result["runs"] = len(times)
    if spec.get("compare"):
        with torch.no_grad():
            ref_plan, _ = reference_sinkhorn(cost)
        result["max_abs_diff"] = (plan - ref_plan).abs().max().item()
    return result


@dataclass
class Runner:
    threads: int
    repeats: int
    mem_limit_gb: float
    time_budget: float
    workdir: str
    clock: str

    def cost_file(self, kind: str, shape: str) -> str:
        path = os.path.join(self.workdir, f"{shape}-{kind}.pt")
        if not os.path.exists(path):
            import torch

            torch.save(make_cost(kind, shape), path)
        return path

    def __call__(self, measure: str = "time", **spec) -> dict:
        spec = {
            "threads": self.threads,
            "repeats": self.repeats,
            "time_budget": self.time_budget,
            "clock": self.clock,
            **spec,
        }
        spec["cost_file"] = self.cost_file(spec["cost"], spec["shape"])
        spec["measure"] = measure
        limit = int(self.mem_limit_gb * 2**30)

        def preexec() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        if measure == "memory":
            # Every allocation >= 64 KiB gets its own mapping, returned to the system when freed: the process's
            # resident size then follows the live tensors. (With glibc's adaptive threshold, freed 20 MB blocks
            # stay resident in the heap, and two identical reference runs peaked at 3.4 and 7.7 GB.)
            env["MALLOC_MMAP_THRESHOLD_"] = "65536"
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            preexec_fn=preexec,
            env=env,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            oom = "memory" in tail[0].lower() or "alloc" in tail[0].lower() or proc.returncode < 0
            return {"error": f"OOM (> {self.mem_limit_gb:g} GB)" if oom else tail[0]}
        return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------------ report
def _fmt_time(r: dict) -> str:
    return r["error"] if "error" in r else f"{r['time'] * 1e3:,.0f} ms"


def _fmt_mem(r: dict) -> str:
    if "error" in r:
        return r["error"]
    return f"{r['peak_mb']:,.0f} MB" if r["peak_mb"] >= 10 else f"{r['peak_mb']:.1f} MB"


def _ratio(num: dict, den: dict, key: str) -> str:
    if "error" in num or "error" in den:
        return "n/a"
    a, b = num[key], den[key]
    if key == "peak_mb" and min(a, b) < 1.0:
        return "(< 1 MB)"  # below what a process's resident size resolves
    return f"{a / max(b, 1e-9):.1f}x"


def _table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases (no 'hard' costs, no POT loop), 1 repeat")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats after the first run (default 2)")
    parser.add_argument("--mem-limit-gb", type=float, default=14.0)
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default=None,
        help="time = the process's CPU time (default with 1 thread: other processes' load does not inflate it) "
        "or the wall clock (default with more threads)",
    )
    parser.add_argument("--only", choices=list(SHAPES), action="append", help="restrict to these shapes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    import shutil
    import tempfile

    import torch

    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 2)
    workdir = tempfile.mkdtemp(prefix="sinkhorn-bench-")
    clock = args.clock or ("cpu" if args.threads == 1 else "wall")
    runner = Runner(args.threads, repeats, args.mem_limit_gb, time_budget=20.0, workdir=workdir, clock=clock)
    shapes = args.only or list(SHAPES)
    costs = COSTS[:2] if args.quick else COSTS
    print(
        f"# Sinkhorn benchmark: torch {torch.__version__}, CPU, {args.threads} thread(s), eps {EPS}, reference rule "
        f"(thresh {THRESH:g}, <= {MAX_ITER} iterations)\n\ntime = median of up to {1 + repeats} run(s), "
        f"{'process CPU time (user + sys)' if clock == 'cpu' else 'wall clock'}; "
        "peak = increase of the resident size of a fresh process during one call (allocations >= 64 KiB mapped "
        "individually, so that it follows the live tensors); ratios = other / ours\n"
    )
    rows = []
    for shape in shapes:
        b, k, m, n, training = SHAPES[shape]
        for kind in costs:
            case = {"shape": shape, "cost": kind, "training": training}
            r: dict = {"shape": f"{shape} ({b}x{k}={b * k} x {m}x{n})", "cost": kind, "training": training}
            r["ours_f"] = runner(impl="ours", mode="fwd", compare=True, **case)
            r["ref_f"] = runner(impl="ref", mode="fwd", **case)
            iters = r["ours_f"].get("iterations", r["ref_f"].get("iterations", MAX_ITER))
            r["pot_f"] = runner(impl="pot", mode="fwd", iterations=iters, **case)
            if not args.quick:
                r["potloop_f"] = runner(impl="pot-loop", mode="fwd", iterations=iters, **case)
            mode = "fwdbwd" if training else "fwd"
            for impl in ("ours", "ref", "pot"):
                r[f"{impl}_mem"] = runner("memory", impl=impl, mode=mode, iterations=iters, **case)
            if training:
                for impl in ("ours", "ref", "pot"):
                    r[f"{impl}_fb"] = runner(impl=impl, mode="fwdbwd", iterations=iters, **case)
            r["iters"] = f"{r['ref_f'].get('iterations', '?')}/{r['ours_f'].get('iterations', '?')}"
            rows.append(r)
            print(f"  measured {shape} / {kind}", file=sys.stderr, flush=True)

    print("## Forward time (inference shapes: no_grad; training shapes: with autograd recording)\n")
    header = ["shape", "cost", "iterations ref/ours", "ref", "ours", "POT batched", "ref/ours", "POT/ours"]
    if not args.quick:
        header += ["POT per-problem loop", "loop/ours"]
    table = []
    for r in rows:
        line = [r["shape"], r["cost"], r["iters"], _fmt_time(r["ref_f"]), _fmt_time(r["ours_f"])]
        line += [
            _fmt_time(r["pot_f"]),
            _ratio(r["ref_f"], r["ours_f"], "time"),
            _ratio(r["pot_f"], r["ours_f"], "time"),
        ]
        if not args.quick:
            line += [_fmt_time(r["potloop_f"]), _ratio(r["potloop_f"], r["ours_f"], "time")]
        table.append(line)
    _table(header, table)
    diffs = ", ".join(
        f"{r['shape'].split()[0]}/{r['cost']} {r['ours_f'].get('max_abs_diff', float('nan')):.1e}" for r in rows
    )
    print(f"max |plan_ours - plan_ref| (plans sum to 1 over M*N entries): {diffs}\n")

    print("## Inference peak memory (forward, no_grad)\n")
    header = ["shape", "cost", "ref", "ours", "POT batched", "ref/ours", "POT/ours"]
    table = [
        [
            *(r["shape"], r["cost"], _fmt_mem(r["ref_mem"]), _fmt_mem(r["ours_mem"]), _fmt_mem(r["pot_mem"])),
            *(_ratio(r["ref_mem"], r["ours_mem"], "peak_mb"), _ratio(r["pot_mem"], r["ours_mem"], "peak_mb")),
        ]
        for r in rows
        if not r["training"]
    ]
    _table(header, table)

    print("## Training: forward+backward time and peak memory\n")
    header = ["shape", "cost", "iterations", "time ref", "time ours", "time POT", "ref/ours", "POT/ours"]
    header += ["peak ref", "peak ours", "peak POT", "ref/ours", "POT/ours"]
    table = []
    for r in rows:
        if not r["training"]:
            continue
        rf, of, pf, rm, om, pm = (r[k] for k in ("ref_fb", "ours_fb", "pot_fb", "ref_mem", "ours_mem", "pot_mem"))
        table.append(
            [
                *(r["shape"], r["cost"], r["iters"], _fmt_time(rf), _fmt_time(of), _fmt_time(pf)),
                *(_ratio(rf, of, "time"), _ratio(pf, of, "time"), _fmt_mem(rm), _fmt_mem(om), _fmt_mem(pm)),
                *(_ratio(rm, om, "peak_mb"), _ratio(pm, om, "peak_mb")),
            ]
        )
    _table(header, table)

    flat_shape = "coco-train" if "coco-train" in shapes else shapes[-1]
    if SHAPES[flat_shape][4]:
        counts = (10, 30, 100)
        print(f"## Forward+backward peak memory against the iteration count ({flat_shape}, trained-like cost)\n")
        case = {"shape": flat_shape, "cost": "trained-like", "training": True}
        table = []
        for impl in ("ours", "ref"):
            cells = [
                _fmt_mem(runner("memory", impl=impl, mode="fwdbwd", kwargs={"fixed_iters": c}, **case)) for c in counts
            ]
            table.append([impl, *cells])
        _table(["iterations", *map(str, counts)], table)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
