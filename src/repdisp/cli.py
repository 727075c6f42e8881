"""The ``repdisp`` command line: parsing and error handling only; work lives in the modules.

Each command group is a module in ``repdisp.commands`` with ``register(subparsers)``; it sets
``func`` on its parser. Modules are found automatically, so a new command is one new file (add
its name to ``COMMAND_GROUPS`` to place it in ``repdisp --help``). Command modules import their
work lazily, so ``repdisp --help`` stays fast. A ``RepdispError`` becomes one line on stderr and
exit code 2.
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

# `repdisp --help` lists commands in these groups, in this order; a command not named here is
# listed under "tools".
COMMAND_GROUPS = {
    "core": ("measure", "sites", "models"),
    "analyses": ("ppl-vs-dispersion", "layers", "compare", "clusters"),
    "applications": ("accuracy-probe", "hard-slices", "gap", "knn-keys", "knnlm"),
    "training": ("finetune", "train", "sweep"),
    "tools": ("report", "merge-ppl", "reproduce"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("repdisp")
    except PackageNotFoundError:  # run from a source tree without installing
        from . import __version__

        return __version__


class _VersionAction(argparse.Action):
    """--version, looked up only when asked (importlib.metadata costs time at every start)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        print(f"repdisp {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole CLI. Imports only argparse and the light ``commands`` modules (no torch, scipy,
    transformers or matplotlib): each command imports its work when it runs."""
    from . import commands
    from .commands.options import Parser

    parser = Parser(
        prog="repdisp",
        description="Representation dispersion of causal language models.",
        usage="repdisp [-h] [--version] COMMAND [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `repdisp COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS, prog="repdisp"
    )
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name != "options":
            importlib.import_module(f"repdisp.commands.{info.name}").register(sub)
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    rank = {c: i for i, c in enumerate(c for cs in COMMAND_GROUPS.values() for c in cs)}
    sub._choices_actions.sort(key=lambda a: (rank.get(a.dest, len(rank)), a.dest))
    lines = []
    for group, names in COMMAND_GROUPS.items():
        members = [c for c in names if c in helps]
        if group == "tools":
            members += sorted(c for c in helps if c not in rank)
        if members:
            lines.append(f"{group}:")
            lines += [f"  {c:<20}{helps[c]}" for c in members]
    parser.description += "\n\ncommands:\n" + "\n".join("  " + ln for ln in lines)
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
    warnings.filterwarnings("ignore", module="transformers")
    try:
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
