"""repdisp knn-keys: the sub-layer dispersion profile that picks the kNN-LM key (Table 1)."""

from __future__ import annotations

import argparse

from . import checks
from .options import (
    add_batch_option,
    add_data_options,
    add_model_options,
    add_output_options,
    add_seeds_options,
    add_site_option,
    check_context,
    check_out,
    model_from_args,
    out_dir,
    site_list,
)

CHUNKS_HELP = "N values: chunks drawn per seed for each dispersion, comma list"


def add_profile_options(g, chunks: list[int], num_seeds: int, chunk_len: int, sites: str) -> None:
    """--chunks --num-seeds --chunk-len --site of a key dispersion profile (knn-keys, knnlm)."""
    g.add_argument("--chunks", type=checks.int_list(2), default=chunks, help=CHUNKS_HELP)
    add_seeds_options(g, num_seeds)
    g.add_argument(
        "--chunk-len", type=checks.int_at_least(2), default=chunk_len, help="tokens per chunk"
    )
    add_site_option(
        g,
        default=sites,
        what="candidate key sites: final-block (last block's h_att, h_ffn), all (every block), or",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("knn-keys", help="dispersion of candidate kNN-LM keys (h_att vs h_ffn)")
    add_model_options(p)
    add_data_options(p)
    g = p.add_argument_group("profile options")
    add_profile_options(g, [10, 50, 100], 10, 512, "final-block")
    add_batch_option(g)
    add_output_options(p, "knn-keys", "knn_keys.json/.csv/.png")
    p.set_defaults(func=run)


def profile_sites(sites: list[str]) -> str:
    """The site string of a profile: a named set (final-block, all) or a comma list of names."""
    return ",".join(sites)


def run(args: argparse.Namespace) -> int:
    from ..applications.knnlm.keys import profile_keys
    from ..core.corpus import make_segments
    from ..io.results import write_result

    check_out(args, "knn_keys.json")
    lm = model_from_args(args)
    check_context(lm, "--chunk-len", args.chunk_len)
    windows = make_segments(
        lm.tokenizer,
        args.data,
        None,
        args.chunk_len,
        text_field=args.text_field,
        encoding_errors=args.encoding_errors,
        split=args.split,
        trust_remote_code=args.trust_remote_code,
    )
    profile = profile_keys(
        lm,
        windows,
        chunks=args.chunks,
        seeds=args.num_seeds,
        sites=profile_sites(site_list(args.sites)),
        batch_size=args.batch_size,
        cache=not args.no_cache,
        progress=not args.quiet,
    )
    print(profile.table())
    paths = write_result(out_dir(args), "knn_keys", profile)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
