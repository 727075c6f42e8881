"""Output and tracking options: ``--out DIR`` (omitted: a new folder ``repdisp-out/COMMAND-N``,
the first N not taken, ``$REPDISP_OUT`` replacing ``repdisp-out``, so runs never collide; given:
the command refuses to start when DIR already holds its result file from an earlier run, unless
``--overwrite``), ``--quiet``, ``--no-cache``; ``--report-to`` and ``--dispersion-every`` for
the training commands. Different commands may share one folder (their files have different
names), which is what ``repdisp report DIR`` renders."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ...core.errors import RepdispError
from .. import checks

OUT_ROOT = "repdisp-out"


def add_cache_options(g: Any) -> None:
    g.add_argument("--no-cache", action="store_true", help="do not read or write extraction shards")


def add_output_options(
    p: argparse.ArgumentParser,
    command: str,
    files: str | None = None,
    cache: bool = True,
    required: bool = False,
    help: str | None = None,
    quiet: bool = True,
) -> argparse._ArgumentGroup:
    """--out DIR, --overwrite, --quiet (and --no-cache)."""
    g = p.add_argument_group("output options")
    if required:
        g.add_argument("--out", required=True, metavar="DIR", help=help)
        return _output_tail(g, command, cache, quiet)
    what = f"result folder for {files}" if files else "result folder"
    g.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help=help or f"{what} (default: a new folder {OUT_ROOT}/{command}-N)",
    )
    if help is None:  # the guarded default grammar
        g.add_argument(
            "--overwrite",
            action="store_true",
            help="replace the results of an earlier run in --out (refused otherwise)",
        )
    return _output_tail(g, command, cache, quiet)


def _output_tail(g: Any, command: str, cache: bool, quiet: bool) -> Any:
    g.set_defaults(_command=command)
    if cache:
        add_cache_options(g)
    if quiet:
        g.add_argument("--quiet", action="store_true", help="no progress bars")
    return g


def check_out_folder(out: str | None) -> None:
    """--out is a folder: refuse an existing file or a file-like name (an older habit)."""
    if not out:
        return
    path = Path(out)
    if path.is_file() or path.suffix.lower() in (".json", ".csv", ".png", ".html", ".parquet"):
        raise RepdispError(
            f"--out {out}: --out takes a folder (results are written inside it), not a file; "
            f"e.g. --out {path.with_suffix('')}"
        )


def check_out(args: argparse.Namespace, *names: str) -> None:
    """Refuse, before any work, to replace an earlier run's result files in an explicit --out."""
    check_out_folder(args.out)
    # two runs writing one --out at once: the second is refused (core.shards); the ranks of
    # one torchrun job share their --out, so only rank 0 claims it
    if args.out and os.environ.get("RANK", "0") == "0":
        from ...core.shards import claim_folder

        claim_folder(Path(args.out))
    if not args.out or getattr(args, "overwrite", False):
        return
    taken = [n for n in names if (Path(args.out) / n).exists()]
    if taken:
        raise RepdispError(
            f"{Path(args.out) / taken[0]} exists (an earlier run's result); pass --overwrite to "
            "replace it, or another --out"
        )


def out_dir(args: argparse.Namespace) -> Path:
    """The result folder: --out, or (once per run) a new ``repdisp-out/COMMAND-N``."""
    if not args.out:
        root = Path(os.environ.get("REPDISP_OUT") or OUT_ROOT)
        root.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            candidate = root / f"{args._command}-{n}"
            try:
                candidate.mkdir()
            except FileExistsError:
                n += 1
                continue
            args.out = str(candidate)
            break
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def add_tracking_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--report-to (the Trainer's trackers) and --dispersion-every (the DispersionCallback)."""
    g = p.add_argument_group("tracking options")
    g.add_argument(
        "--report-to",
        default="none",
        type=checks.nonempty("none, or a comma list of trackers"),
        help="the Trainer's trackers, comma list: none, tensorboard (OUT/logs), wandb, mlflow, ...",
    )
    g.add_argument(
        "--dispersion-every",
        type=checks.nonneg_int,
        default=0,
        metavar="N",
        help="log the final site's dispersion on fixed held-out text every N steps (0 = off)",
    )
    return g


def report_to(args: argparse.Namespace) -> list[str] | str:
    """--report-to as the Trainer wants it: a list of names, or ``"none"``."""
    return [x.strip() for x in args.report_to.split(",") if x.strip()] or "none"
