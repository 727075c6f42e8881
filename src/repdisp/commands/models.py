"""repdisp models list / prepare."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="bundled models: list, prepare")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    ls = msub.add_parser("list", help="bundled models, installed or not, and their cache")
    ls.set_defaults(func=run_list)
    pr = msub.add_parser(
        "prepare", help="convert a bundled GGUF (or a .gguf path) into a safetensors cache once"
    )
    pr.add_argument("name", help="bundled name, or the path of a .gguf file")
    pr.add_argument("--force", action="store_true", help="convert again even if cached")
    pr.set_defaults(func=run_prepare)


def run_list(args: argparse.Namespace) -> int:
    from ..core.models import list_bundled

    for row in list_bundled():
        state = "installed" if row["installed"] else f"not installed ({row['install']})"
        cache = row["cache"] or "not prepared"
        print(f"{row['name']:<14}{row['description']}\n{'':<14}{state}; cache: {cache}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from ..core.models import prepare, prepare_gguf

    if args.name.endswith(".gguf") and Path(args.name).is_file():
        print(prepare_gguf(Path(args.name), force=args.force))
    else:
        print(prepare(args.name, force=args.force))
    return 0
