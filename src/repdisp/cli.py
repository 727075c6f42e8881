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
import signal
import sys
import threading
import traceback
import warnings
from typing import Any

from .core.errors import RepdispError

SITE_OPTIONS = ("--site", "--sites")
# modules of repdisp.commands that hold shared options, not a command group
_NOT_COMMANDS = ("checks", "option_groups", "options")

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
        if info.name not in _NOT_COMMANDS:
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so every cleanup path runs (exit 143)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def _kept() -> str:
    """ "; finished shards are kept" when this run wrote or found some, else ""."""
    from .core.shards import finished_count

    return "; finished shards are kept" if finished_count() else ""


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no details"


def _user_error(e: BaseException) -> str | None:
    """The one-line message of an exception a user's input causes (None: a bug of ours)."""
    import json

    if isinstance(e, RepdispError):
        return str(e)
    if isinstance(e, OSError):  # missing file, permissions, disk full: say which file
        where = e.filename or "I/O"
        return f"{e.strerror or _one_line(e)} ({where}){_kept()}"
    if isinstance(e, UnicodeDecodeError):
        return f"input is not valid UTF-8 ({_one_line(e)})"
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON input: {_one_line(e)}"
    yaml = sys.modules.get("yaml")
    if yaml is not None and isinstance(e, yaml.YAMLError):
        return f"invalid YAML: {' '.join(_one_line(e).split())}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. Exit 0 on success; 2 with one ``repdisp: error: ...`` line for anything the
    user's input or environment causes (argparse errors too); 130 on Ctrl-C; 1 with one
    ``repdisp: internal error`` line for a bug (``REPDISP_DEBUG=1`` prints the traceback)."""
    # Keep errors to one line: no transformers warnings or weight-loading bars around them.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    tf = sys.modules.get("transformers")  # imported before main() (in-process use): apply now
    if tf is not None and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] not in ("", "0"):
        tf.utils.logging.disable_progress_bar()
    debug = os.environ.get("REPDISP_DEBUG", "") not in ("", "0")
    argv = _glue_negative_sites(list(sys.argv[1:] if argv is None else argv))
    from .core.shards import finished_count

    finished_count(reset=True)
    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        args = build_parser().parse_args(argv)
        warnings.filterwarnings("ignore", module="transformers")
        from .io.results import command_line

        with command_line(["repdisp", *argv]):  # named in every result file's provenance
            return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        kept = _kept()
        tail = f"{kept} and the same command resumes" if kept else "; nothing was finished yet"
        print(f"repdisp: {what}{tail}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        message = _user_error(e)
        if message is not None:
            print(f"repdisp: error: {message}", file=sys.stderr)
            return 2
        print(
            f"repdisp: internal error: {type(e).__name__}: {_one_line(e)} (this is a bug; rerun "
            "with REPDISP_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        from .core.shards import release_claims

        release_claims()
        if main_thread and old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
