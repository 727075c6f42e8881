"""repdisp reproduce: the command line of the paper's evaluation grid (``repdisp.reproduce``).

This module only registers the subcommand and turns its flags into a call of the package:
``config_from_args`` -> ``reproduce.load_config`` (scale or YAML file, then the flags), and
``run`` -> ``reproduce.grid.run`` with the model loader options of the command line. What the
grid computes, how it resumes and how verdicts are decided is documented in the package.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..reproduce.claims import claims  # noqa: F401  (older imports)
from ..reproduce.config import OVERRIDABLE, SCALES
from ..reproduce.config import load_config as _load_config
from ..reproduce.config import segments as _segments  # noqa: F401  (older import)
from ..reproduce.mc import auroc  # noqa: F401
from ..reproduce.verdict import VERDICT_RULE, verdict  # noqa: F401
from . import checks

_FLAGS = {"models": "model"}  # config key -> argparse dest where they differ


def register(sub: argparse._SubParsersAction) -> None:
    from .options import (
        DATA_HELP,
        AppendAction,
        add_batch_option,
        add_model_options,
        add_output_options,
    )
    from .options import _source as source

    p = sub.add_parser(
        "reproduce",
        help="the paper's evaluation grid (models x corpora), resumable, with a findings page",
    )
    c = p.add_argument_group("grid options")
    c.add_argument("--config", help="YAML file of settings (keys as in configs/reproduce_cpu.yaml)")
    c.add_argument(
        "--scale",
        choices=tuple(SCALES),
        default="cpu",
        help="built-in sizes when no --config: cpu (this machine) or gpu (the paper's sizes)",
    )
    add_model_options(p, multiple=True)
    d = p.add_argument_group("data options")
    d.add_argument(
        "--data",
        action=AppendAction,
        default=None,
        type=source,
        metavar="SOURCE",
        help=DATA_HELP + "; repeat for several",
    )
    p.set_defaults(model=None, dtype=None, device=None)  # None: the config's value
    g = p.add_argument_group("sampling options (replace the config's)")
    g.add_argument("--segments", type=checks.int_at_least(2), help="segments to sample")
    g.add_argument(
        "--segments-for",
        action="append",
        metavar="MODEL[@CORPUS]=N",
        help="segments for one model, or one model on one corpus (file stem or path); repeat",
    )
    g.add_argument("--seq-len", type=checks.int_at_least(2), help="tokens per segment")
    add_batch_option(g)
    p.set_defaults(batch_size=None)
    g.add_argument(
        "--mc",
        action="append",
        metavar="TASK=PATH[:LIMIT]",
        help="multiple-choice data (arc-challenge=DIR, mmlu=DIR); replaces the config's",
    )
    g.add_argument("--no-mc", action="store_true", help="skip the accuracy probe and hard slices")
    g.add_argument(
        "--no-knn", action="store_true", help="skip the kNN key profile and kNN-LM perplexity"
    )
    g.add_argument(
        "--only",
        action="append",
        metavar="ROW[,ROW]",
        help="claim ids (e.g. fig4,fig31): run only the steps those rows need; repeat or comma",
    )
    add_output_options(
        p,
        "reproduce",
        required=True,
        cache=False,
        help="result folder for the grid and findings.md/.html; a rerun resumes it",
    )
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The grid's settings: ``--scale`` or ``--config``, then every flag that was given."""
    overrides = {
        key: getattr(args, _FLAGS.get(key, key))
        for key in OVERRIDABLE
        if getattr(args, _FLAGS.get(key, key)) is not None
    }
    return _load_config(
        args.scale,
        args.config,
        overrides=overrides,
        segments_for=args.segments_for or (),
        mc=args.mc,
        no_mc=args.no_mc,
        no_knn=args.no_knn,
        only=args.only,
    )


load_config = config_from_args  # older name


def run(args: argparse.Namespace) -> int:
    from ..reproduce import grid

    cfg = config_from_args(args)
    t0 = time.perf_counter()
    md, page = grid.run(
        cfg,
        args.out,
        progress=not args.quiet,
        model_args=getattr(args, "model_args", None),
        trust_remote_code=getattr(args, "trust_remote_code", False),
        allow_pickle=getattr(args, "allow_pickle", False),
    )
    from ..core.distributed import from_env

    if not from_env().is_main:  # under torchrun rank 0 alone writes the page
        return 0
    print(Path(md).read_text().split("## Commands")[0])
    print(f"wrote {md}, {page} ({time.perf_counter() - t0:.0f} s)")
    return 0
