"""repdisp measure / sites."""

from __future__ import annotations

import argparse

from ..analyses.measure import measure
from ..core.distributed import from_env
from ..core.sites import blocks_of
from ..io.results import write_json
from . import add_data_args, add_model_args, checks, model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("measure", help="perplexity and dispersion of a model on text")
    add_model_args(p)
    add_data_args(p)
    p.add_argument(
        "--site",
        action="append",
        dest="sites",
        help="site(s): final (default), embed, I.attn, I.ffn, all (comma list or repeat)",
    )
    p.add_argument(
        "--pooling",
        default="last",
        choices=("last", "mean", "within"),
        help="last token (paper default), mean of tokens, or token-level within segment",
    )
    p.add_argument(
        "--bootstrap", type=checks.nonneg_int, default=1000, help="bootstrap resamples for the CI"
    )
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument(
        "--cache-dir",
        help="folder for this run's extraction shards (default $REPDISP_HOME/runs/KEY); "
        "must be shared by all processes of a multi-process run",
    )
    p.add_argument(
        "--shard-segments",
        type=checks.positive_int,
        default=256,
        help="segments per shard, the unit of resumption and of work per process (256)",
    )
    p.set_defaults(func=run_measure)

    s = sub.add_parser("sites", help="list the site names of a model")
    add_model_args(s)
    s.set_defaults(func=run_sites)


def run_measure(args: argparse.Namespace) -> int:
    result = measure(
        model_from_args(args),
        args.data,
        args.sites or ["final"],
        args.segments,
        args.seq_len,
        args.pooling,
        args.seed,
        args.batch_size,
        bootstrap=args.bootstrap,
        skip_first=args.skip_first,
        cache=False if args.no_cache else (args.cache_dir or True),
        progress=not args.quiet,
        text_field=args.text_field,
        encoding_errors=args.encoding_errors,
        shard_segments=args.shard_segments,
    )
    if not from_env().is_main:  # rank 0 of a multi-process run reports
        return 0
    print(result.table())
    if args.out:
        write_json(args.out, result.to_dict())
        print(f"wrote {args.out}")
    return 0


def run_sites(args: argparse.Namespace) -> int:
    lm = model_from_args(args)
    n = len(blocks_of(lm.model))
    print(f"{lm.name}: {type(lm.model).__name__}, {n} blocks, d={lm.model.config.hidden_size}")
    print("embed            input to block 0")
    for i in range(n):
        print(f"{i}.attn {'':<9}block {i}: residual after attention (h_att; also {i - n}.attn)")
        print(f"{i}.ffn  {'':<9}block {i}: block output (h_ffn; also {i}, {i - n})")
    print("final            final-norm output (HF's last hidden state)")
    return 0
