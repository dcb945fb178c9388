"""What one process with ONE micro-batch of the whole global batch changes against the reference's layout.

The reference computes its global batch of 16 as 4 GPUs x 4 images: each GPU's Sinkhorn stops on one statistic
over its 4 images, and the summed loss is divided by the present masks averaged over the 4 GPUs (clamped at 1).
`otseg train` reproduces that on any decomposition (docs/training.md). A device with memory for 16 images can also
run them as one micro-batch with one stopping test over all 16 (`--batch-size 16 --set train.sinkhorn_stop_group=0`):
this measures what that changes, on the demo's tiny world with the regular `Trainer`, every dropout off, for two
models: the demo's untrained OTSeg (random head and prompts on the tiny CLIP) and the shipped trained demo model.

Four layouts of the same global batch of 16 (the same images, the same augmentations):
  reference  4 micro-batches of 4 (accumulated; masks counted over the 16; each micro-batch's Sinkhorn stops alone)
  grouped    1 micro-batch of 16, Sinkhorn stopping groups of 4 (the reference's groups, computed at once)
  pairs      1 micro-batch of 16, stopping groups of 2 (what 8 processes x 2 images give)
  one stop   1 micro-batch of 16, one stopping test over all 16 (stop group 0)

Printed per model: the relative difference of the first step's gradient against the reference layout's, over
`--batches` different global batches (median and max; "grouped" is the float-rounding floor), the Sinkhorn
iterations per call, and after `--steps` optimizer steps from the same start the distance of the weights,
||theta - theta_reference|| / ||theta_reference - theta_0||.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/recipe_grouping.py
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from otseg.config import TrainConfig
from otseg.demo.presets import DemoSettings, demo_model_config, demo_train_config
from otseg.demo.pretrained import SHIPPED_MODEL, unpack_demo_model
from otseg.demo.tiny_clip import tiny_clip_path
from otseg.demo.training import build_demo_model, demo_datasets
from otseg.demo.world import world_dir
from otseg.formats.openai_clip import read_clip_state_dict
from otseg.model.segmentor import OTSeg
from otseg.ops import record_sinkhorn_calls
from otseg.train.trainer import Trainer

GLOBAL_BATCH = 16
# name -> (images per micro-batch, images per Sinkhorn stopping test; 0 = the whole micro-batch)
LAYOUTS = {"reference": (4, 4), "grouped": (16, 4), "pairs": (16, 2), "one stop": (16, 0)}


def _no_dropout(model: OTSeg) -> OTSeg:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _trainable(model: OTSeg) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])


def _train(
    make_model: Callable[[], OTSeg], train_set: Any, base: TrainConfig, layout: str, steps: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Train `steps` steps in `layout` -> (first step's gradient, final trainable weights, Sinkhorn iterations of
    the first step's calls)."""
    batch, group = LAYOUTS[layout]
    cfg = dataclasses.replace(
        base, batch_size=batch, sinkhorn_stop_group=group, grad_accum=0, world_size=0, max_iters=steps, seed=seed
    )
    model = make_model()
    grads: list[torch.Tensor] = []
    iterations: list[int] = []
    with tempfile.TemporaryDirectory() as work:
        trainer = Trainer(model, train_set, cfg, Path(work), progress=False)
        original_step = trainer.optimizer.step

        def spy_step(*args: Any, **kwargs: Any) -> Any:
            if not grads:
                grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
                iterations.extend(c.iterations for c in calls)
            return original_step(*args, **kwargs)

        trainer.optimizer.step = spy_step  # type: ignore[method-assign]
        with record_sinkhorn_calls() as calls:
            trainer.train()
    return grads[0], _trainable(model), iterations


def _relative(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> float:
    return float((a - b).double().norm() / scale.double().norm())


def measure(name: str, make_model: Callable[[], OTSeg], train_set: Any, base: TrainConfig, args: Any) -> None:
    grad_diffs: dict[str, list[float]] = {layout: [] for layout in LAYOUTS if layout != "reference"}
    iterations: dict[str, list[int]] = {layout: [] for layout in LAYOUTS}
    for seed in range(args.batches):  # another seed: another order, so another first global batch
        first = {layout: _train(make_model, train_set, base, layout, 1, seed) for layout in LAYOUTS}
        reference = first["reference"][0]
        for layout in grad_diffs:
            grad_diffs[layout].append(_relative(first[layout][0], reference, reference))
        for layout in LAYOUTS:
            iterations[layout].extend(first[layout][2])
    theta0 = _trainable(make_model())
    final = {layout: _train(make_model, train_set, base, layout, args.steps, 0)[1] for layout in LAYOUTS}
    print(f"\n{name}")
    for layout in LAYOUTS:
        its = iterations[layout]
        capped = sum(i >= base_max_iter(make_model) for i in its) / len(its)
        line = f"  {layout:<10} Sinkhorn iterations per call: mean {statistics.fmean(its):5.1f}, max {max(its):3d}"
        line += f", at the cap {100 * capped:4.1f} %"
        if layout != "reference":
            diffs = grad_diffs[layout]
            update = _relative(final[layout], final["reference"], final["reference"] - theta0)
            line += (
                f"; gradient vs reference: median {statistics.median(diffs):.1e}, max {max(diffs):.1e}"
                f"; weights after {args.steps} steps: {update:.1e} of the update"
            )
        print(line, flush=True)


def base_max_iter(make_model: Callable[[], OTSeg]) -> int:
    return make_model().config.head.sinkhorn_max_iter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=6, help="global batches whose first gradient is compared (6)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps of the update comparison (20)")
    args = p.parse_args()
    if args.batches < 1 or args.steps < 1:
        p.error(f"--batches {args.batches} and --steps {args.steps}: each at least 1")
    torch.set_num_threads(1)
    settings = DemoSettings.full(0)
    train_set, _ = demo_datasets(settings, world_dir(settings.world))
    clip_state = read_clip_state_dict(tiny_clip_path(settings.world, settings.clip))
    base = dataclasses.replace(
        demo_train_config("otseg", "inductive", settings.recipe),
        global_batch=GLOBAL_BATCH,
        warmup_iters=0,  # the demo's lr from the first step, so that the compared updates are not vanishing
        checkpoint_interval=10**6,
        log_interval=10**6,
    )
    print(
        f"global batch {GLOBAL_BATCH}, demo world, OTSeg inductive, dropout off, lr {base.lr:g} (prompts x "
        f"{base.backbone_lr_mult:g}); layouts: "
        + "; ".join(f"{k}: micro-batch {b}, stop group {g or b}" for k, (b, g) in LAYOUTS.items())
    )
    model_cfg = demo_model_config("otseg", "inductive", settings.world, settings.clip)

    def untrained() -> OTSeg:
        return _no_dropout(build_demo_model(settings, "otseg", "inductive", clip_state, model_cfg))

    def trained() -> OTSeg:
        return _no_dropout(unpack_demo_model(SHIPPED_MODEL, clip_state)[0].train())

    measure("untrained demo OTSeg (random head and prompts)", untrained, train_set, base, args)
    measure("trained demo model (shipped)", trained, train_set, base, args)


if __name__ == "__main__":
    main()
