"""repdisp clusters: within- and between-cluster distances of n-gram contexts, per checkpoint."""

from __future__ import annotations

import argparse

from . import checks
from .options import (
    add_data_options,
    add_model_options,
    add_output_options,
    add_sampling_options,
    add_site_option,
    check_out,
    model_from_args,
    one_site,
    out_dir,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "clusters",
        help="dispersion within/between clusters of contexts that precede the same frequent n-gram",
    )
    add_model_options(p, multiple=True)
    add_data_options(p)
    g = add_sampling_options(p, segments=None, seq_len=None, skip_first=False)
    g.add_argument("--ngram", type=checks.positive_int, default=10, help="n-gram length in tokens")
    g.add_argument(
        "--min-count",
        type=checks.int_at_least(2),
        default=100,
        help="minimum occurrences of an n-gram",
    )
    g.add_argument(
        "--per-cluster",
        type=checks.int_at_least(2),
        default=100,
        help="occurrences used per n-gram",
    )
    g.add_argument("--context", type=checks.positive_int, default=100, help="left-context tokens")
    g.add_argument(
        "--clusters", type=checks.positive_int, default=500, help="most frequent n-grams used"
    )
    add_site_option(g, what="the one site of the context vector")
    g.add_argument(
        "--bootstrap", type=checks.nonneg_int, default=1000, help="bootstrap resamples for the CIs"
    )
    add_output_options(p, "clusters", "clusters.json/.csv/.png")
    p.set_defaults(func=run_clusters)


class _LazyModels(list):
    """The --model specs; iterating loads each model only when its turn comes (one in memory)."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(args.model)
        self.args = args

    def __iter__(self):
        for spec in super().__iter__():
            yield model_from_args(self.args, spec)


def run_clusters(args: argparse.Namespace) -> int:
    from ..analyses import clusters as clusters_mod
    from ..core.sampling import Sampling
    from ..core.settings import Loading
    from ..io.provenance import note_call, settings_keywords

    site = one_site(args, "clusters")
    check_out(args, "clusters.json")
    settings = clusters_mod.ClusterSettings(
        ngram=args.ngram,
        min_count=args.min_count,
        per_cluster=args.per_cluster,
        context=args.context,
        n_clusters=args.clusters,
        site=site,
        bootstrap=args.bootstrap,
    )
    sampling = Sampling(
        seed=args.seed,
        batch_size=args.batch_size,
        cache=not args.no_cache,
        progress=not args.quiet,
        text_field=args.text_field,
        encoding_errors=args.encoding_errors,
        split=args.split,
    )
    loading = Loading(device=args.device, dtype=args.dtype)
    models = _LazyModels(args)
    result = clusters_mod.run_clusters(models, args.data, settings, sampling, loading)
    used = ("seed", "batch_size", "cache", "progress", "text_field", "encoding_errors", "split")
    keywords = settings_keywords(settings) | {k: getattr(sampling, k) for k in used}
    keywords |= {"device": loading.device, "dtype": loading.dtype}
    note_call(result, clusters_mod.clusters, (models, args.data), keywords)
    print(result.summary())
    out = out_dir(args)
    clusters_mod.write_outputs(result, out)
    print(f"wrote {out}/clusters.json, clusters.csv, clusters_ngrams.csv, clusters.png")
    return 0
