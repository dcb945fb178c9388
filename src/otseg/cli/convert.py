"""`otseg convert`: a reference release checkpoint (.pth) -> an otseg model folder."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a reference release checkpoint (.pth) to otseg's format (safetensors + config.json)",
        description="Convert a reference release checkpoint (mmseg .pth) into an otseg folder (model.safetensors "
        "with its SHA-256, config.json) that Predictor.from_pretrained, segment, eval and export open.",
    )
    p.add_argument("checkpoint", help="reference checkpoint, e.g. voc_inductive.pth")
    p.add_argument("--preset", required=True, help="the preset the checkpoint was trained with")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--embeddings", help="class embeddings to store with the model (e.g. voc12_otseg.npy)")
    p.add_argument("--clip", help="OpenAI CLIP weights (ViT-B-16.pt) to attach the text tower for live class names")
    p.add_argument("--keep-text-encoder", action="store_true", help="keep the checkpoint's text_encoder.* weights")
    p.add_argument("--allow-pickle", action="store_true", help="load with pickle (only for files you trust)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from otseg.cli.overrides import parse_overrides
    from otseg.clip.text import TextEncoder
    from otseg.errors import BadValueError
    from otseg.formats.class_embeddings import load_class_embeddings
    from otseg.model.build import build_model, load_clip_into
    from otseg.model_files.otseg_folder import save_pretrained
    from otseg.model_files.reference_pth import load_reference_checkpoint, read_reference_state_dict

    model = build_model(args.preset, **parse_overrides(args.set))
    if args.clip:
        load_clip_into(model, args.clip)
    elif args.keep_text_encoder:
        ref_sd, _ = read_reference_state_dict(args.checkpoint, allow_pickle=args.allow_pickle)
        if not any(k.startswith("text_encoder.") for k in ref_sd):
            raise BadValueError(f"{args.checkpoint} holds no text_encoder.* weights to keep")
        model.attach_text_encoder(TextEncoder(model.config.text))
    report = load_reference_checkpoint(model, args.checkpoint, allow_pickle=args.allow_pickle)
    print(report.summary())
    if args.embeddings:
        model.set_class_embeddings(load_class_embeddings(args.embeddings))
        print(f"class embeddings from {args.embeddings}: {tuple(model.class_embeddings.shape)}")
    else:
        print("no --embeddings given: the converted model needs set_class_embeddings()/set_classes() before use")
    out = save_pretrained(model, args.out, extra={"converted_from": str(args.checkpoint)})
    print(f"wrote {out / 'model.safetensors'} and {out / 'config.json'}")
    return 0
