"""repdisp clusters: within- and between-cluster distances of n-gram contexts, per checkpoint."""

from __future__ import annotations

import argparse

from ..analyses.clusters import clusters, write_outputs
from . import add_model_args, check_data, checks

_source = checks.nonempty("a file, folder, built-in or hf:NAME")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "clusters",
        help="dispersion within/between clusters of contexts that precede the same frequent n-gram",
    )
    add_model_args(p, multiple=True)
    p.add_argument(
        "--data", default="python-docs", type=_source, help="built-in, file, folder or hf: source"
    )
    p.add_argument("--text-field", default="text", help="field holding the text in jsonl/csv")
    p.add_argument("--split", help="split of an hf: dataset (default test)")
    p.add_argument("--encoding-errors", default="strict", choices=("strict", "replace"))
    p.add_argument(
        "--ngram", type=checks.positive_int, default=10, help="n-gram length in tokens (10)"
    )
    p.add_argument(
        "--min-count", type=checks.int_at_least(2), default=100, help="minimum occurrences (100)"
    )
    p.add_argument(
        "--per-cluster",
        type=checks.int_at_least(2),
        default=100,
        help="occurrences used per n-gram (100)",
    )
    p.add_argument(
        "--context", type=checks.positive_int, default=100, help="left-context tokens (100)"
    )
    p.add_argument(
        "--clusters", type=checks.positive_int, default=500, help="most frequent n-grams used (500)"
    )
    p.add_argument("--site", default="final", help="site of the context vector (final)")
    p.add_argument("--seed", type=checks.seed, default=0, help="occurrence sampling seed (0)")
    p.add_argument(
        "--bootstrap", type=checks.nonneg_int, default=1000, help="resamples of clusters for CIs"
    )
    p.add_argument("--batch-size", type=checks.positive_int, default=8)
    p.add_argument("--no-cache", action="store_true", help="do not read or write extraction shards")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="folder for clusters.json/.csv/.png")
    p.set_defaults(func=run_clusters)


def run_clusters(args: argparse.Namespace) -> int:
    check_data(args)
    result = clusters(
        args.model,
        args.data,
        args.ngram,
        args.min_count,
        args.per_cluster,
        args.context,
        args.clusters,
        args.site,
        args.seed,
        args.batch_size,
        args.device,
        args.dtype,
        cache=not args.no_cache,
        progress=not args.quiet,
        text_field=args.text_field,
        encoding_errors=args.encoding_errors,
        bootstrap=args.bootstrap,
    )
    print(result.summary())
    write_outputs(result, args.out)
    print(f"wrote {args.out}/clusters.json, clusters.csv, clusters_ngrams.csv, clusters.png")
    return 0
