"""`otseg weights list | verify FILE | fetch NAME --to DIR`: the files a run needs, where they are published, and
how to recognise them."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights",
        help="the files to download (CLIP, reference checkpoints/embeddings, dataset archives): list, verify, fetch",
        description="Known downloadable files: where each is published and how to recognise it.",
    )
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="SUBCOMMAND", help="list, verify or fetch")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", help="another registry JSON (default: the one shipped with otseg)")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")

    q = wsub.add_parser("list", parents=[common], help="print every known file with where to get it")
    q.set_defaults(run=run_list)
    q = wsub.add_parser(
        "verify",
        parents=[common],
        help="say which known file FILE is (by size and digest), or why it is none; nothing in it is executed",
    )
    q.add_argument("file")
    q.set_defaults(run=run_verify)
    q = wsub.add_parser(
        "fetch",
        parents=[common],
        help="download a known file (resumable, checksum-verified, atomic), or print the manual steps",
    )
    q.add_argument("name", help="a name from otseg weights list (or its file name)")
    q.add_argument("--to", required=True, help="destination folder")
    q.set_defaults(run=run_fetch)


def run_list(args: argparse.Namespace) -> int:
    from otseg.weights.registry import load_registry

    entries = load_registry(args.registry)
    for kind in ("clip", "embeddings", "checkpoint", "dataset"):
        group = [e for e in entries if e.kind == kind]
        if not group:
            continue
        print(f"[{kind}]")
        for e in group:
            digest = ", ".join(f"{k} {v}" for k, v in e.digests.items()) or "no published checksum"
            size = f", {e.size:,} bytes" if e.size else f", at most {e.max_size:,} bytes" if e.max_size else ""
            print(f"  {e.name:<34} {e.filename or '(file name as downloaded)'}{size}")
            print(f"  {'':<34} {e.description}")
            print(f"  {'':<34} get: {e.where}" + ("  (otseg weights fetch " + e.name + " --to DIR)" if e.url else ""))
            print(f"  {'':<34} {digest}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from otseg.weights.registry import identify, load_registry

    result = identify(args.file, load_registry(args.registry), progress=not args.no_progress)
    if result.matched:
        assert result.entry is not None
        print(f"{args.file}: this is {result.entry.name} ({result.reason})")
        return 0
    print(f"{args.file}: not a known file: {result.reason}")
    return 1


def run_fetch(args: argparse.Namespace) -> int:
    from otseg.weights.fetch import fetch, manual_steps
    from otseg.weights.registry import find_entry, load_registry

    entry = find_entry(args.name, load_registry(args.registry))
    if entry.url is None:
        print(manual_steps(entry, args.to))
        return 1
    path = fetch(entry, args.to, progress=not args.no_progress)
    print(f"{entry.name}: {path} (verified: {', '.join(entry.digests) or 'no published checksum, not verified'})")
    return 0
