"""repdisp train / sweep: push-away training of GPT-2 from scratch (§3.4, Table 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import checks
from .options import add_output_options, add_tracking_options, report_to


def _common(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--config", required=True, help="recipe YAML (see configs/train_*.yaml)")
    add_output_options(
        p,
        command,
        cache=False,
        required=False,
        help="result folder (default: runs/training/NAME, NAME from the config)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train GPT-2 from scratch with the push-away loss")
    _common(t, "train")
    t.add_argument(
        "--aux-weight",
        type=checks.nonneg_float,
        help="λ; 0 = cross-entropy baseline (default: the config's)",
    )
    t.add_argument("--lr", type=checks.positive_float, help="learning rate (default: the config's)")
    t.add_argument(
        "--seed",
        type=checks.seed,
        help="seed of initialisation and data order (default: the config's)",
    )
    t.add_argument(
        "--max-steps", type=checks.positive_int, help="optimizer steps (default: the config's)"
    )
    t.add_argument(
        "--save-every",
        type=checks.nonneg_int,
        default=0,
        help="checkpoint every N steps in OUT/.checkpoints (a multiple of the config's "
        "log_steps); the same command after a crash resumes from the last one",
    )
    t.add_argument(
        "--no-all-reduce",
        action="store_true",
        help="multi-process: per-process dispersion instead of the exact global-batch one",
    )
    add_tracking_options(t)
    t.set_defaults(func=run_train)

    s = sub.add_parser("sweep", help="λ × lr × seed grid and Table 2 (base vs +aux test ppl)")
    _common(s, "sweep")
    s.add_argument(
        "--save-every",
        type=checks.nonneg_int,
        default=0,
        help="checkpoint every N steps within a run (finished runs are always kept and reused)",
    )
    s.set_defaults(func=run_sweep_cmd)


def run_train(args: argparse.Namespace) -> int:
    import os

    from ..io.results import write_csv, write_result
    from ..training import load_config
    from ..training.run import RunOptions, run_train

    cfg = load_config(
        args.config,
        aux_weight=args.aux_weight,
        lr=args.lr,
        seed=args.seed,
        max_steps=args.max_steps,
        aux_all_reduce=False if args.no_all_reduce else None,
    )
    out = Path(args.out or f"runs/training/{cfg.name}")
    options = RunOptions(
        report_to=report_to(args),
        logging_dir=out / "logs",
        dispersion_every=args.dispersion_every,
        checkpoint_dir=out / ".checkpoints",
        save_every=args.save_every,
    )
    run = run_train(cfg, progress=not args.quiet, options=options)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    write_result(out, "run", run, tables=False, figure=False)
    write_csv(out / "history.csv", run.history)
    write_csv(out / "evals.csv", run.evals)
    run.plot(out / "curves.png")
    for e in run.evals:
        print(
            f"step {e['step']:>5} {e['domain']:<10} {e['split']:<4} ppl {e['ppl']:9.2f}  "
            f"dispersion {e['dispersion']:.4f}"
        )
    print(f"wrote {out}/run.json ({run.wall_s:.0f} s)")
    return 0


def run_sweep_cmd(args: argparse.Namespace) -> int:
    from ..training import load_config, run_sweep

    cfg = load_config(args.config)
    out = Path(args.out or f"runs/training/{cfg.name}")
    result = run_sweep(cfg, out, progress=not args.quiet, save_every=args.save_every)
    print(result.markdown())
    print(f"chosen λ per lr (validation): {result.chosen}")
    print(f"wrote {out}/table2.md, table2.csv, grid.csv, sweep.json, sweep.png")
    return 0
