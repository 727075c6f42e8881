"""repdisp clusters: within- and between-cluster distances of n-gram contexts, per checkpoint."""

from __future__ import annotations

import argparse

from ..analyses.clusters import clusters, write_outputs
from . import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "clusters",
        help="dispersion within/between clusters of contexts that precede the same frequent n-gram",
    )
    add_model_args(p, multiple=True)
    p.add_argument("--data", default="python-docs", help="built-in, file, folder or hf: source")
    p.add_argument("--text-field", default="text", help="field holding the text in jsonl/csv")
    p.add_argument("--encoding-errors", default="strict", choices=("strict", "replace"))
    p.add_argument("--ngram", type=int, default=10, help="n-gram length in tokens (10)")
    p.add_argument("--min-count", type=int, default=100, help="minimum occurrences (100)")
    p.add_argument("--per-cluster", type=int, default=100, help="occurrences used per n-gram (100)")
    p.add_argument("--context", type=int, default=100, help="left-context tokens (100)")
    p.add_argument("--clusters", type=int, default=500, help="most frequent n-grams used (500)")
    p.add_argument("--site", default="final", help="site of the context vector (final)")
    p.add_argument("--seed", type=int, default=0, help="occurrence sampling seed (0)")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples of clusters for CIs")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-cache", action="store_true", help="do not read or write extraction shards")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="folder for clusters.json/.csv/.png")
    p.set_defaults(func=run_clusters)


def run_clusters(args: argparse.Namespace) -> int:
    result = clusters(
        args.model,
        args.data,
        ngram=args.ngram,
        min_count=args.min_count,
        per_cluster=args.per_cluster,
        context=args.context,
        n_clusters=args.clusters,
        site=args.site,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
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
