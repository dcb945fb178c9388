"""How far the faster Sinkhorn modes move the reference's golden outputs (fixtures of the official code).

For each mode (given to the calls as a user would to a whole model: keyword arguments of `sinkhorn`, and
`InferenceOptions(sinkhorn=SinkhornOptions(...))` of the head's and the segmentor's calls) prints, against the golden
fixtures' recorded outputs:

* Sinkhorn cases: the largest max|T - T_ref| / max T_ref over the 11 cases the reference runs to convergence, and
  separately over the 2 it stops at its 100-iteration cap (where any other stop moves the plan a lot);
* decode head: the largest |score - score_ref| of the tiny decode head's test-time scores (`eval_inductive`);
* segmentor: the same for the tiny segmentor's `encode_decode` (inductive);
* argmax changed: the share of pixels of those two score maps whose top class differs from the reference's.

The golden tolerance on scores is atol 1e-5 + rtol 1e-4. The fixtures' random-weight models stop after 17-18
iterations per call, trained weights need more (up to the cap), so the moves here are lower bounds there.

Usage:
    python bench/sinkhorn_modes.py [--golden DIR]    # DIR: the golden fixtures (default $OTSEG_GOLDEN, else
                                                     # ../shared/golden beside the checkout); a few seconds
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from otseg.config import HeadConfig, ModelConfig, VisionConfig
from otseg.model.head import OTSegHead
from otseg.model.inference_options import InferenceOptions
from otseg.model.segmentor import OTSeg
from otseg.model_files.reference_pth import convert_reference_state_dict, map_reference_key
from otseg.ops import SinkhornOptions, sinkhorn

MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "update='log' (what torch.compile runs)": {"update": "log"},
    "fixed_iters=50": {"fixed_iters": 50},
    "fixed_iters=20": {"fixed_iters": 20},
    "fixed_iters=10": {"fixed_iters": 10},
    "thresh=1e-5": {"thresh": 1e-5},
    "thresh=1e-4": {"thresh": 1e-4},
}
GOLDEN_FILES = ("sinkhorn.pt", "decode_head.pt", "segmentor.pt", "backbone.pt")


def default_golden_dir() -> Path:
    env = os.environ.get("OTSEG_GOLDEN")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "golden"


def load(folder: Path, name: str) -> dict:
    return torch.load(folder / name, map_location="cpu", weights_only=True)


def golden_head(g: dict) -> OTSegHead:
    c = g["config"]
    cfg = HeadConfig(embed_dim=c["embed_dims"], num_layers=c["num_layers"], num_heads=c["num_heads"],
                     ffn_dim=4 * c["embed_dims"], output_size=c["img_size"], dropout=0.0, attn_dropout=0.0)  # fmt: skip
    head = OTSegHead(cfg)
    state = {}
    for key, value in g["state_dict"].items():
        ours, _ = map_reference_key("decode_head." + key)
        if ours is not None:
            state[ours.removeprefix("head.")] = value
    head.load_state_dict(state, strict=True)
    return head.eval()


def golden_segmentor(seg: dict, backbone: dict) -> OTSeg:
    ref = seg["config"]["inductive"]
    b, h, test = ref["backbone"], ref["decode_head"], ref["test_cfg"]
    config = ModelConfig(
        name="golden-tiny", setting="inductive",
        vision=VisionConfig(image_size=b["input_resolution"], patch_size=b["patch_size"], width=b["width"],
                            layers=b["layers"], heads=b["heads"], output_dim=b["output_dim"],
                            num_prompt_tokens=b["num_tokens"], deep_prompt_layers=b["total_d_layer"],
                            prompt_dropout=0.0),
        head=HeadConfig(embed_dim=h["embed_dims"], num_layers=h["num_layers"], num_heads=h["num_heads"],
                        ffn_dim=4 * h["embed_dims"], output_size=h["img_size"], dropout=0.0, attn_dropout=0.0),
        class_names=tuple(ref["class_names"]), unseen_classes=tuple(ref["novel_class"]),
        crop_size=test["crop_size"][0], stride=test["stride"][0],
    )  # fmt: skip
    model = OTSeg(config)
    reference = {**{"backbone." + k: v for k, v in backbone["state_dict"].items()}, **seg["state_dict"]}
    state, _ = convert_reference_state_dict(reference, model)
    model.load_state_dict(state, strict=True)
    model.set_class_embeddings(seg["text_embedding"])
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=default_golden_dir(), help="folder of the golden fixtures")
    args = parser.parse_args(argv)
    missing = [name for name in GOLDEN_FILES if not (args.golden / name).is_file()]
    if missing:
        print(f"sinkhorn_modes.py: {args.golden} lacks {', '.join(missing)}: pass --golden DIR", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    cases = load(args.golden, "sinkhorn.pt")["cases"]
    head_fixture = load(args.golden, "decode_head.pt")
    seg = load(args.golden, "segmentor.pt")
    head, model = golden_head(head_fixture), golden_segmentor(seg, load(args.golden, "backbone.pt"))
    x, head_ref = head_fixture["inputs"], head_fixture["results"]["eval_inductive"]["pred"]
    seen = torch.tensor([True, True, True, False, False])
    seg_ref = seg["outputs"]["encode_decode_inductive"]

    print("# Sinkhorn modes against the reference's golden outputs (`python bench/sinkhorn_modes.py`)\n")
    print("| mode | Sinkhorn cases, converged: max dT / max T | capped cases | decode head scores | "
          "segmentor scores | argmax changed |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for label, settings in MODES.items():
        converged, capped = 0.0, 0.0
        options = InferenceOptions(sinkhorn=SinkhornOptions(**settings))
        with torch.no_grad():
            for case in cases:
                uniform = torch.allclose(case["mu"], torch.full_like(case["mu"], 1 / case["mu"].shape[1]))
                mu = None if uniform else case["mu"]
                plan = sinkhorn(case["C"], case["epsilon"], mu=mu, nu=case["nu"], **settings)
                move = ((plan - case["T"]).abs().max() / case["T"].abs().max()).item()
                if case["iterations"] < 100:
                    converged = max(converged, move)
                else:
                    capped = max(capped, move)
            head_scores = head.predict(x["visual"], x["cls_token"], x["text"], seen, options)
            seg_scores = model.encode_decode(seg["images"], options=options)
        changed = [(s.argmax(1) != r.argmax(1)) for s, r in ((head_scores, head_ref), (seg_scores, seg_ref))]
        share = sum(c.sum().item() for c in changed) / sum(c.numel() for c in changed)
        cells = [label, f"{converged:.1e}", f"{capped:.1e}", f"{(head_scores - head_ref).abs().max().item():.1e}"]
        cells += [f"{(seg_scores - seg_ref).abs().max().item():.1e}", f"{share * 100:.2f} %"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
