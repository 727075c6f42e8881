"""repdisp measure / sites."""

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
    out_dir,
    sampling_from_args,
    site_list,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "measure",
        help="perplexity and dispersion of a model on text",
        description="Sample segments of text, run the model once, and report perplexity and the "
        "dispersion (mean pairwise cosine distance) at each site with a bootstrap CI.",
    )
    add_model_options(p)
    add_data_options(p)
    g = add_sampling_options(p, segments=200, seq_len=256)
    add_site_option(g)
    g.add_argument(
        "--pooling",
        default="last",
        choices=("last", "mean", "within"),
        help="last token (paper default), mean of tokens, or token-level within segment",
    )
    g.add_argument(
        "--bootstrap", type=checks.nonneg_int, default=1000, help="bootstrap resamples for the CIs"
    )
    o = add_output_options(p, "measure", "measure.json/.csv/.png, measure_segments.parquet")
    o.add_argument(
        "--save-segments",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write one row per segment as measure_segments.parquet",
    )
    o.add_argument(
        "--cache-dir",
        help="folder for this run's extraction shards (default: $REPDISP_HOME/runs/KEY); "
        "must be shared by all processes of a multi-process run",
    )
    o.add_argument(
        "--shard-segments",
        type=checks.positive_int,
        default=256,
        help="segments per shard, the unit of resumption and of work per process",
    )
    p.set_defaults(func=run_measure)

    s = sub.add_parser(
        "sites",
        help="list a model's sites under their repdisp, TransformerLens and HF names",
        description="Reads the model's configuration only (config.json, a .gguf header or the "
        "hub config), never its weights.",
    )
    add_model_options(s, loading=False)
    s.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a hub model to run its own code (off by default)",
    )
    s.set_defaults(func=run_sites)


def run_measure(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..analyses.measure import MeasureSettings, measure, measure_keywords
    from ..analyses.measure import run_measure as measure_with
    from ..core.distributed import from_env
    from ..io.provenance import note_call
    from ..io.results import write_result

    check_out(args, "measure.json")
    lm = model_from_args(args)
    sampling = replace(
        sampling_from_args(args), cache=False if args.no_cache else (args.cache_dir or True)
    )
    settings = MeasureSettings(
        sites=site_list(args.sites),
        pooling=args.pooling,
        bootstrap=args.bootstrap,
        shard_segments=args.shard_segments,
        per_segment=args.save_segments,
    )
    result = measure_with(lm, args.data, sampling, settings)
    note_call(result, measure, (lm, args.data), measure_keywords(sampling, settings))
    if not from_env().is_main:  # rank 0 of a multi-process run reports
        return 0
    print(result.table())
    out = out_dir(args)
    paths = write_result(out, "measure", result)  # measure_segments.parquet with per_segment
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def run_sites(args: argparse.Namespace) -> int:
    from ..core.models import model_config
    from ..core.sites import site_names

    cfg = model_config(args.model, args.trust_remote_code)
    n = cfg["n_blocks"]
    print(f"{args.model}: {cfg['architecture']}, {n} blocks, d={cfg['d_model']} (from its config)")
    print(f"{'repdisp':<18}{'TransformerLens':<28}{'HF hidden_states':<18}what")
    top = {
        "tok_embed": "token embedding alone (hook_embed)",
        "pos_embed": "learned position embedding (models that add one)",
        "embed": "input to block 0 (embeddings)",
        "final_normalized": "final-norm input normalized, before its gain and bias",
        "final": "final-norm output (HF's last hidden state)",
    }
    names = ["tok_embed", "pos_embed", "embed"]
    for i in range(n):
        names += [f"{i}.attn_out", f"{i}.attn", f"{i}.mlp_out", f"{i}.ffn"]
    for name in [*names, "final_normalized", "final"]:
        ours, tl, hs = site_names(name, n)
        if name in top:
            what = top[name]
        else:
            i, kind = name.split(".")
            neg = int(i) - n
            what = {
                "attn_out": f"block {i}: what attention adds to the residual",
                "attn": f"block {i}: residual after attention (h_att; also {neg}.attn)",
                "mlp_out": f"block {i}: what the MLP adds to the residual",
                "ffn": f"block {i}: block output (h_ffn; also {i}, {neg}.ffn)",
            }[kind]
        print(f"{ours:<18}{tl:<28}{'' if hs is None else f'hs:{hs}':<18}{what}")
    return 0
