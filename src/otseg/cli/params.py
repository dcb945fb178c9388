"""`otseg params`: a preset's parameter counts, and a check against the reference's key table."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "params",
        help="parameter counts of a preset (and a check against the reference key table)",
        description="Count a preset's parameters by part (frozen CLIP, VPT prompts, head); with --reference-keys, "
        "check every key of the reference checkpoint is mapped or dropped by name and the trainable counts agree.",
    )
    p.add_argument("--preset", default="voc12-inductive", help="the preset counted (default: voc12-inductive)")
    p.add_argument("--reference-keys", metavar="TSV", help="the reference key table, e.g. official_state_dict_voc.tsv")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otseg.cli.overrides import parse_overrides
    from otseg.formats.reference_key_table import read_reference_key_table
    from otseg.model.build import build_model
    from otseg.model_files.reference_pth import map_reference_key

    model = build_model(args.preset, **parse_overrides(args.set))
    groups = {"backbone (frozen CLIP)": 0, "backbone (VPT prompts)": 0, "head": 0}
    for name, p in model.named_parameters():
        if name.startswith("head."):
            groups["head"] += p.numel()
        elif p.requires_grad:
            groups["backbone (VPT prompts)"] += p.numel()
        else:
            groups["backbone (frozen CLIP)"] += p.numel()
    trainable, total = model.num_parameters(trainable_only=True), model.num_parameters()
    print(f"preset {args.preset}")
    for name, n in groups.items():
        print(f"  {name:<24} {n:>14,}")
    print(f"  {'total':<24} {total:>14,}   (the CLIP text tower, 63.4 M frozen, is not part of the segmentor)")
    print(f"  {'trainable':<24} {trainable:>14,}")
    if not args.reference_keys:
        return 0
    rows = read_reference_key_table(args.reference_keys)
    ref_trainable = sum(int(r["numel"]) for r in rows if r["trainable"] == "1")
    dropped_trainable = 0
    ours = model.state_dict()
    print(f"\nreference keys in {args.reference_keys}: {len(rows)}")
    reasons: dict[str, list[int]] = {}
    unmatched = []
    for r in rows:
        new_key, reason = map_reference_key(r["key"])
        if new_key is None:
            reasons.setdefault(reason, [0, 0])
            reasons[reason][0] += 1
            reasons[reason][1] += int(r["numel"])
            if r["trainable"] == "1":
                dropped_trainable += int(r["numel"])
        elif new_key not in ours or "x".join(map(str, ours[new_key].shape)) != r["shape"]:
            unmatched.append(r["key"])
    mapped = len(rows) - sum(n for n, _ in reasons.values())
    print(f"  mapped: {mapped} keys")
    for reason, (n, numel) in reasons.items():
        print(f"  dropped: {n} keys ({numel:,} values): {reason}")
    print(f"  reference trainable:              {ref_trainable:>14,}")
    print(f"  minus dropped never-used trainable: {dropped_trainable:>12,}")
    print(f"  = expected trainable:             {ref_trainable - dropped_trainable:>14,}")
    print(f"  ours:                             {trainable:>14,}")
    if unmatched:
        print(f"  {len(unmatched)} mapped key(s) have no matching parameter/shape here: {unmatched[:5]}")
        return 1
    if ref_trainable - dropped_trainable != trainable:
        print("  MISMATCH between the expected and our trainable parameter count")
        return 1
    print("  every reference key is mapped or dropped by name; trainable counts agree")
    return 0
