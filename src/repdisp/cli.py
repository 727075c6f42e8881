"""The ``repdisp`` command line: parsing and error handling only; work lives in the modules.

Each command group is a module in ``repdisp.commands`` with ``register(subparsers)``; it sets
``func`` on its parser. Modules are found automatically, so a new command is one new file. A ``RepdispError`` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings

from .core.errors import RepdispError

SITE_OPTIONS = ("--site", "--sites")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repdisp",
        description="Representation dispersion of causal language models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"repdisp.commands.{info.name}").register(sub)
    return parser


def _glue_negative_sites(argv: list[str]) -> list[str]:
    """Let ``--site -1.attn`` through: argparse would take ``-1.attn`` for an option."""
    out: list[str] = []
    for tok in argv:
        if out and out[-1] in SITE_OPTIONS and tok[:1] == "-" and tok[1:2].isdigit():
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


def main(argv: list[str] | None = None) -> int:
    # Keep errors to one line: no transformers warnings or weight-loading bars around them.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    argv = _glue_negative_sites(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    from .io.results import command_line

    warnings.filterwarnings("ignore", module="transformers")
    try:
        with command_line(["repdisp", *argv]):  # named in every result file's provenance
            return int(args.func(args) or 0)
    except RepdispError as e:
        print(f"repdisp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "repdisp: interrupted; finished shards are kept and the same command resumes",
            file=sys.stderr,
        )
        return 130
    except OSError as e:  # disk full, permissions: say which file, keep what was written
        print(
            f"repdisp: error: {e.strerror or e} ({e.filename or 'I/O'}); finished shards are kept",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
