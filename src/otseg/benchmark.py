"""The paper's efficiency table for this code: parameters, GFLOPs and images per second of the ZegCLIP-style
baseline, OTSeg (decoder path only) and OTSeg+ (decoder + MPS ensemble), measured on the device it runs on.

GFLOPs are given twice (reference-spec section 6):

* "mmcv" = what the paper reports (61.9 G for OTSeg at 512x512): mmcv 1.4.4 `get_model_complexity_info` counts
  multiply-accumulates (MACs) only in modules whose type is *exactly* nn.Linear, nn.Conv2d, nn.LayerNorm or nn.ReLU
  (Linear: input elements x out_features, no bias; Conv2d: kernel x in/groups x out per output position, + bias;
  LayerNorm: input elements, x2 if affine; ReLU: output elements). It therefore skips the ViT's attention
  (nn.MultiheadAttention in the reference), CLIP's LayerNorm subclass, `backbone.proj` (a bare parameter),
  einsums, Sinkhorn and interpolation. Our ViT attention is `SelfAttention`, whose output projection is a plain
  nn.Linear that mmcv *would* count (12 x 1035 tokens x 768 x 768 = 7.33 G at 512x512, the reference's is an
  nn.MultiheadAttention submodule that it skips), so the table gives both our modules' count and the count with
  the reference's module types ("mmcv, ref. types"), which is the one to compare with the paper.
* "full" = MACs (FLOPs / 2) from `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention;
  no elementwise ops): comparable with the spec's ~111.8 G and ZegCLIP's fvcore 110.4 G.

Parameters: trainable (what the paper calls learnable: VPT prompts + decode head) and total, for the segmentor
(the frozen CLIP text tower, 63.4 M, is not part of it). The reference's 13.8 M / 164.1 M also count its decoder's
never-called self-attention and norm1 (3,154,944 parameters, dropped by our converter) and the text tower.

Images per second: `predict_scores` on one 512x512 image (one sliding-window crop), eval, no_grad, the three models
interleaved so that load changes hit them alike; on the CPU the overheads are computed from the process's CPU time,
which other processes' load does not inflate (run with `--threads 1` on a shared machine). The weights are random
(no CLIP weights or datasets here), so the Sinkhorn loops stop after a few iterations; the table also times OTSeg
and OTSeg+ with every Sinkhorn call forced to the reference's 100-iteration cap, an upper bound for trained
weights: the default loop, stop checks included, with a threshold it never meets (`CAPPED`: the calls get
`InferenceOptions(sinkhorn=SinkhornOptions(thresh=0.0))`).
The decode heads alone (on precomputed backbone features) are timed over more rounds than the whole images: the
backbones are identical, and the heads' difference is the steadier measure of the overhead.

Precisions: the table is measured in float32 (the reference's). With bf16 (`--precision`; by default wherever the
device has bfloat16 units) the same interleaved rounds also time `predict_scores(precision="bf16")` of every
variant, and a second table gives images per second at each precision (`otseg.model.precision`).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from otseg.model.build import build_model
from otseg.model.inference_options import InferenceOptions
from otseg.model.precision import Precision, check_precision
from otseg.model.segmentor import OTSeg
from otseg.ops import SinkhornOptions, record_sinkhorn_calls

__all__ = [
    "MODEL_VARIANTS",
    "efficiency_table",
    "format_precision_table",
    "format_table",
    "full_macs",
    "mmcv_style_macs",
]

# The default Sinkhorn loop, stop checks included, with a threshold it never meets: every call runs to max_iter.
CAPPED = InferenceOptions(sinkhorn=SinkhornOptions(thresh=0.0))

# name -> build_model overrides on top of the preset
MODEL_VARIANTS: dict[str, dict[str, Any]] = {
    "ZegCLIP-style baseline": {
        "head__attention": "softmax",
        "head__use_mps": False,
        "head__map_combination": "last",
        "templates": "templates_1",
    },
    "OTSeg": {"head__use_mps": False},
    "OTSeg+": {},
}

_MMCV_TYPES = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.ReLU)


def _mmcv_module_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """MACs of one module call, by mmcv 1.4.4's counting rules for these four module types."""
    x = inputs[0]
    if type(module) is nn.Linear:
        return x.numel() * output.shape[-1]
    if type(module) is nn.Conv2d:
        kernel = module.kernel_size[0] * module.kernel_size[1]
        per_position = kernel * module.in_channels // module.groups * module.out_channels
        positions = output.shape[0] * output.shape[2] * output.shape[3]
        return per_position * positions + (module.out_channels * positions if module.bias is not None else 0)
    if type(module) is nn.LayerNorm:
        return x.numel() * (2 if module.elementwise_affine else 1)
    if type(module) is nn.ReLU:
        return output.numel()
    return 0


def _is_reference_mha_part(name: str) -> bool:
    """Our ViT attention's out_proj: inside nn.MultiheadAttention in the reference, where mmcv does not count it."""
    return name.startswith("backbone.") and name.endswith(".attn.out_proj")


def mmcv_style_macs(
    model: nn.Module, run: Callable[[], Any], *, reference_types: bool = False
) -> tuple[int, dict[str, int]]:
    """Count MACs like mmcv's `get_model_complexity_info`: hooks on modules of exactly these types only.

    Args:
        model: the model whose modules are hooked.
        run: calls the model (e.g. `lambda: model.encode_decode(images)`).
        reference_types: leave out the modules that are not of a counted type in the reference (our ViT
            attention's out_proj, an nn.MultiheadAttention part there).

    Returns:
        (total MACs, MACs per top-level child: {"backbone": ..., "head": ...}).
    """
    per_group: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if type(module) not in _MMCV_TYPES or (reference_types and _is_reference_mha_part(name)):
            continue
        group = name.split(".")[0]

        def hook(mod: nn.Module, inputs: tuple[Any, ...], output: Any, group: str = group) -> None:
            per_group[group] = per_group.get(group, 0) + _mmcv_module_macs(mod, inputs, output)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return sum(per_group.values()), per_group


def full_macs(model: nn.Module, run: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """MACs (= FLOPs / 2) of matmuls, convolutions and attention, by `torch.utils.flop_counter.FlopCounterMode`.

    Returns (total MACs, MACs per top-level child of `model`).
    """

    def cpu_sdpa_flop(query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    custom: dict[Any, Any] = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:  # not in the default registry: CPU attention would count as 0
        custom[cpu_sdpa] = cpu_sdpa_flop
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    # The counter's module tracker hooks tensors that require grad, which no_grad would leave without a grad_fn:
    # freeze the parameters instead (no graph is built when nothing requires grad).
    flags = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    try:
        with counter:
            run()
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    groups = {}
    for key, ops in counts.items():
        parts = key.split(".")
        if len(parts) == 2 and parts[0] == root:
            groups[parts[1]] = sum(ops.values()) // 2
    return counter.get_total_flops() // 2, groups


def _build(preset: str, overrides: dict[str, Any], device: torch.device) -> OTSeg:
    with torch.random.fork_rng(devices=[]):  # reproducible weights, without touching the caller's RNG
        torch.manual_seed(0)
        model = build_model(preset, **overrides).eval().to(device)
    cfg = model.config
    k, n, d = cfg.num_classes, cfg.num_prompts, cfg.head.embed_dim
    g = torch.Generator().manual_seed(0)
    model.set_class_embeddings(torch.nn.functional.normalize(torch.randn(k, n, d, generator=g), dim=-1))
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_interleaved(
    fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Median seconds per call of each function, run round-robin (warmup rounds discarded).

    Returns {name: {"wall": ..., "cpu": ...}}: wall-clock time, and this process's CPU time (which does not advance
    while other processes hold the cores, so it is the steadier measure on a shared CPU; with one thread it is
    the compute time).
    """
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(warmup + repeats):
        for i in range(len(names)):  # rotate the order every round, so that no model always runs first
            name = names[(i + r) % len(names)]
            fn = fns[name]
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            if r >= warmup:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    return {n: {"wall": statistics.median(wall[n]), "cpu": statistics.median(cpu[n])} for n in fns}


def efficiency_table(
    device: str | torch.device = "cpu",
    image_size: int = 512,
    repeats: int = 3,
    warmup: int = 1,
    preset: str = "voc12-inductive",
    capped: bool = True,
    precisions: Sequence[Precision] = ("float32",),
) -> list[dict[str, Any]]:
    """Measure parameters, GFLOPs and speed of the three model variants (`MODEL_VARIANTS`).

    Args:
        device: where to build and run the models.
        image_size: square input side (the paper: 512; one sliding-window crop at the VOC presets).
        repeats, warmup: timed and discarded rounds of the interleaved timing.
        preset: the preset the variants are built from.
        capped: also time the Sinkhorn variants with every Sinkhorn call at the 100-iteration cap.
        precisions: the precisions whose images per second are measured (float32 is always: the table's).

    Returns:
        One dict per variant: name, prompts, trainable_params, total_params, gmacs_mmcv, gmacs_mmcv_reference_types,
        gmacs_full, gmacs_full_head, sinkhorn_calls, sinkhorn_iterations (mean per call), sec_per_image (wall),
        cpu_sec_per_image (process CPU time, CPU only), images_per_second, head_ms (the decode head alone on
        precomputed backbone features), overhead (time per image relative to the baseline), head_overhead (head
        time minus the baseline's, relative to the baseline's time per image), and with `capped` the same at 100
        Sinkhorn iterations per call (`*_capped`); plus device, image_size, repeats, timing, preset, and
        images_per_second_by_precision ({precision: images per second}, wall clock). Overheads use the
        process CPU time on the CPU (steadier on a shared machine) and the wall clock elsewhere.
    """
    device = torch.device(device)
    timed: list[Precision] = ["float32"]
    for precision in precisions:
        if check_precision(precision) not in timed:
            timed.append(precision)
    models = {name: _build(preset, overrides, device) for name, overrides in MODEL_VARIANTS.items()}
    first = next(iter(models.values()))
    for model in models.values():  # identical backbones: the variants differ only in their heads
        model.backbone.load_state_dict(first.backbone.state_dict())
    g = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, image_size, image_size, generator=g).to(device)
    rows: list[dict[str, Any]] = []
    head_inputs: dict[str, tuple[Tensor, Tensor]] = {}
    for name, model in models.items():
        with torch.no_grad():
            patch, global_emb = model.backbone(image)
        head_inputs[name] = (patch, global_emb)
        encode_decode = functools.partial(model.encode_decode, image)
        mmcv_total, _ = mmcv_style_macs(model, encode_decode)
        mmcv_ref, _ = mmcv_style_macs(model, encode_decode, reference_types=True)
        full_total, full_groups = full_macs(model, encode_decode)
        num_calls, mean_iterations = _sinkhorn_calls(model, image)
        rows.append(
            {
                "name": name,
                "prompts": model.config.num_prompts,
                "trainable_params": model.num_parameters(trainable_only=True),
                "total_params": model.num_parameters(),
                "gmacs_mmcv": mmcv_total / 1e9,
                "gmacs_mmcv_reference_types": mmcv_ref / 1e9,
                "gmacs_full": full_total / 1e9,
                "gmacs_full_head": full_groups.get("head", 0) / 1e9,
                "sinkhorn_calls": num_calls,
                "sinkhorn_iterations": mean_iterations,
            }
        )

    def predict(
        m: OTSeg, precision: Precision = "float32", options: InferenceOptions | None = None
    ) -> Callable[[], Any]:
        return lambda: m.predict_scores(image, precision=precision, options=options)

    def head_only(name: str, options: InferenceOptions | None = None) -> Callable[[], Any]:
        model, (patch, global_emb) = models[name], head_inputs[name]
        seen = model.seen_mask if model.config.apply_seen_bias else None

        def fn() -> None:
            with torch.no_grad():
                model.head.predict(patch, global_emb, model.class_embeddings, seen, options)

        return fn

    # What overheads are computed from: the wall clock on accelerators, this process's CPU time on the CPU.
    key = "wall" if device.type != "cpu" else "cpu"
    # Every (variant, precision) in the same rounds: the precisions' ratios compare runs made at the same time.
    per_precision = _time_interleaved(
        {_precision_key(n, p): predict(m, p) for n, m in models.items() for p in timed}, device, warmup, repeats
    )
    times = {n: per_precision[_precision_key(n, "float32")] for n in models}
    head_rounds = max(4 * repeats, 20)  # a head costs a few % of an image: more rounds for a steady median
    head_times = _time_interleaved({n: head_only(n) for n in models}, device, warmup, head_rounds)
    base_name = next(iter(models))
    capped_times: dict[str, dict[str, float]] = {}
    capped_head: dict[str, dict[str, float]] = {}
    capped_iterations: dict[str, float] = {}
    if capped:
        # The baseline has no Sinkhorn call, so it runs unchanged with the capped options: interleave it again so
        # that the capped overheads compare runs made at the same time.
        names = [n for n, row in zip(models, rows, strict=True) if row["sinkhorn_calls"] or n == base_name]
        # The default loop (per-iteration stop checks) made to run to max_iter: what trained weights cost at worst.
        capped_times = _time_interleaved(
            {n: predict(models[n], options=CAPPED) for n in names}, device, warmup, repeats
        )
        capped_head = _time_interleaved({n: head_only(n, CAPPED) for n in names}, device, warmup, head_rounds)
        capped_iterations = {n: _sinkhorn_calls(models[n], image, CAPPED)[1] for n in names}
    for row in rows:
        name = row["name"]
        t, h = times[name], head_times[name]
        row.update(
            sec_per_image=t["wall"],
            cpu_sec_per_image=t["cpu"] if device.type == "cpu" else None,
            images_per_second=1.0 / t["wall"],
            head_ms=h[key] * 1e3,
            overhead=t[key] / times[base_name][key] - 1.0,
            # The backbones are identical: the heads' difference, relative to the baseline's whole time per image.
            head_overhead=(h[key] - head_times[base_name][key]) / times[base_name][key],
            images_per_second_by_precision={p: 1.0 / per_precision[_precision_key(name, p)]["wall"] for p in timed},
        )
        if name in capped_times and name != base_name:
            tc, hc = capped_times[name], capped_head[name]
            base_t, base_h = capped_times[base_name][key], capped_head[base_name][key]
            row.update(
                sec_per_image_capped=tc["wall"],
                images_per_second_capped=1.0 / tc["wall"],
                head_ms_capped=hc[key] * 1e3,
                overhead_capped=tc[key] / base_t - 1.0,
                head_overhead_capped=(hc[key] - base_h) / base_t,
                sinkhorn_iterations_capped=capped_iterations[name],
            )
    for row in rows:
        row["timing"] = "process CPU time" if key == "cpu" else "wall clock"
    for row in rows:
        row["device"] = _describe(device)
        row["image_size"] = image_size
        row["repeats"] = repeats
        row["preset"] = preset
    return rows


def _precision_key(name: str, precision: Precision) -> str:
    return f"{name} @ {precision}"


def _sinkhorn_calls(model: OTSeg, image: Tensor, options: InferenceOptions | None = None) -> tuple[int, float]:
    """Sinkhorn calls of one `predict_scores(image, options=options)` and their mean iteration count (0 without
    calls)."""
    with record_sinkhorn_calls() as calls:
        model.predict_scores(image, options=options)
    return len(calls), statistics.mean(c.iterations for c in calls) if calls else 0.0


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} thread(s)"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of `efficiency_table` rows, with the setting in a header line."""
    if not rows:
        return ""
    first = rows[0]
    cpu = first.get("cpu_sec_per_image") is not None
    lines = [
        f"{first['device']}, {first['image_size']}x{first['image_size']}, batch 1 (`predict_scores`, one crop), "
        f"median of {first['repeats']} interleaved run(s), random weights. GFLOPs are MACs, as in the paper; "
        f"'vs baseline' and 'head diff' use the {first['timing']}; 'head diff' = (head time - baseline head time) / "
        "baseline time per image (the backbones are identical).",
        "",
        "| model | prompts | trainable params | total params | GFLOPs mmcv: ours / ref. module types | GFLOPs full "
        "| Sinkhorn calls x mean iters | s / image" + (" (CPU s)" if cpu else "") + " | images / s | vs baseline "
        "| head ms | head diff | Sinkhorn forced to its cap: mean iters, s / image, vs baseline, head diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        capped = "-"
        if "sec_per_image_capped" in r:
            capped = (
                f"{r.get('sinkhorn_iterations_capped', float('nan')):.0f}, "
                f"{r['sec_per_image_capped']:.3f}, {100 * r['overhead_capped']:+.1f}%, "
                f"{100 * r['head_overhead_capped']:+.1f}%"
            )
        calls = f"{r['sinkhorn_calls']} x {r['sinkhorn_iterations']:.1f}" if r["sinkhorn_calls"] else "-"
        sec = f"{r['sec_per_image']:.3f}" + (f" ({r['cpu_sec_per_image']:.3f})" if cpu else "")
        lines.append(
            f"| {r['name']} | {r['prompts']} | {r['trainable_params'] / 1e6:.2f} M | {r['total_params'] / 1e6:.2f} M "
            f"| {r['gmacs_mmcv']:.2f} / {r['gmacs_mmcv_reference_types']:.2f} | {r['gmacs_full']:.1f} "
            f"| {calls} | {sec} | {r['images_per_second']:.2f} | {100 * r['overhead']:+.1f}% "
            f"| {r['head_ms']:.1f} | {100 * r['head_overhead']:+.1f}% | {capped} |"
        )
    return "\n".join(lines)


def format_precision_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of images per second at each precision timed, per variant, with the ratio to float32."""
    if not rows:
        return ""
    precisions = list(rows[0]["images_per_second_by_precision"])
    first = rows[0]
    lines = [
        f"Images per second by precision: preset {first['preset']}, {first['device']}, "
        f"{first['image_size']}x{first['image_size']}, wall clock, median of {first['repeats']} interleaved run(s).",
        "",
        "| model | " + " | ".join(precisions) + "".join(f" | {p} / float32" for p in precisions[1:]) + " |",
        "|---|" + "---:|" * (2 * len(precisions) - 1),
    ]
    for r in rows:
        speed = r["images_per_second_by_precision"]
        ratios = "".join(f" | {speed[p] / speed['float32']:.2f}x" for p in precisions[1:])
        lines.append(f"| {r['name']} | " + " | ".join(f"{speed[p]:.3f}" for p in precisions) + ratios + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ command line
