"""repdisp knnlm build | eval | select: a kNN-LM whose key is any site of the model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import RepdispError
from . import checks
from .knn_keys import add_profile_options, profile_sites
from .options import (
    DATA_HELP,
    AppendAction,
    add_batch_option,
    add_data_options,
    add_model_options,
    add_output_options,
    add_site_option,
    add_text_options,
    check_context,
    check_out,
    model_from_args,
    out_dir,
    site_list,
    source_type,
)

RANGE_HELP = DATA_HELP + "; SOURCE@START:END takes a token range"


def _window_args(g) -> None:
    g.add_argument("--context", type=checks.int_at_least(2), default=512, help="tokens per window")
    g.add_argument(
        "--stride",
        type=checks.positive_int,
        default=256,
        help="window step; new targets per window",
    )


def _build_args(g) -> None:
    g.add_argument(
        "--shard-windows", type=checks.positive_int, default=64, help="windows per resumable shard"
    )
    g.add_argument(
        "--index",
        default="auto",
        choices=("auto", "flat", "ivfpq"),
        help="FAISS index: exact flat, IVF-PQ, or auto by datastore size",
    )


def _eval_args(g) -> None:
    g.add_argument(
        "--k", type=checks.positive_int, default=1024, help="neighbours retrieved per token"
    )
    g.add_argument("--lmbda", type=checks.unit_float, default=0.25, help="interpolation weight λ")
    g.add_argument(
        "--temperature", type=checks.positive_float, default=1.0, help="softmax temperature"
    )
    g.add_argument(
        "--lmbda-grid",
        type=checks.float_list(checks.unit_float),
        help="also score these λ, e.g. 0,0.05,0.1,0.25,0.5",
    )
    g.add_argument(
        "--temperature-grid",
        type=checks.float_list(checks.positive_float),
        help="also score these temperatures",
    )
    g.add_argument("--nprobe", type=checks.positive_int, default=32, help="IVF lists searched")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("knnlm", help="kNN-LM: build a datastore, evaluate, select the key site")
    knn = p.add_subparsers(dest="knnlm_command", required=True, metavar="ACTION")

    b = knn.add_parser("build", help="datastore of (site vector -> next token) + FAISS index")
    add_model_options(b)
    add_data_options(b, multiple=True, default=None, required=True, help=RANGE_HELP)
    g = b.add_argument_group("datastore options")
    add_site_option(g, default="-1.ffn", what="key site(s)")
    _window_args(g)
    _build_args(g)
    add_batch_option(g)
    add_output_options(
        b,
        "knnlm-build",
        cache=False,
        required=True,
        help="datastore folder (an interrupted build resumes there)",
    )
    b.set_defaults(func=run_build)

    e = knn.add_parser("eval", help="base and kNN-LM perplexity on held-out text")
    add_model_options(e)
    add_data_options(e, multiple=True, default=None, required=True, help=RANGE_HELP)
    g = e.add_argument_group("evaluation options")
    g.add_argument("--datastore", required=True, help="folder written by knnlm build")
    add_site_option(g, default=None, what="sites of the datastore to use, all when omitted")
    _window_args(g)
    _eval_args(g)
    add_batch_option(g)
    g.add_argument(
        "--verify",
        action="store_true",
        help="also check the sha256 of every shard's keys and of every index file (reads the "
        "whole datastore); sizes, records and the values' checksums are always checked",
    )
    add_output_options(e, "knnlm-eval", "knnlm_eval.json/.csv/.png", cache=False)
    e.set_defaults(func=run_eval)

    s = knn.add_parser("select", help="dispersion profile, then kNN-LM per candidate site")
    add_model_options(s)
    d = s.add_argument_group("data options")
    d.add_argument(
        "--data",
        action=AppendAction,
        type=source_type,
        metavar="SOURCE",
        help="datastore (training) text, required: " + RANGE_HELP + "; repeat to join several",
    )
    d.add_argument(
        "--eval-data",
        action=AppendAction,
        type=source_type,
        metavar="SOURCE",
        help="held-out text to score, required; same forms as --data; repeat to join several",
    )
    d.add_argument("--train", dest="data", action=AppendAction, help=argparse.SUPPRESS)
    d.add_argument("--eval", dest="eval_data", action=AppendAction, help=argparse.SUPPRESS)
    add_text_options(d)
    g = s.add_argument_group("profile options")
    add_profile_options(g, [100], 5, 256, "final-block")
    g = s.add_argument_group("datastore and evaluation options")
    _window_args(g)
    _build_args(g)
    _eval_args(g)
    add_batch_option(g)
    add_output_options(s, "knnlm-select", "datastore/ + knnlm_select.json/.csv/.png")
    s.set_defaults(func=run_select)


def _tokens(lm, sources: list[str], args: argparse.Namespace):
    from ..applications.knnlm import load_tokens

    return load_tokens(
        lm,
        sources,
        text_field=args.text_field,
        encoding_errors=args.encoding_errors,
        split=args.split,
        trust_remote_code=args.trust_remote_code,
    )


def _build_kwargs(args: argparse.Namespace) -> dict:
    return {
        "context": args.context,
        "stride": args.stride,
        "batch_size": args.batch_size,
        "shard_windows": args.shard_windows,
        "index": args.index,
    }


def _eval_kwargs(args: argparse.Namespace) -> dict:
    return {
        "k": args.k,
        "lmbda": args.lmbda,
        "temperature": args.temperature,
        "lmbda_grid": args.lmbda_grid,
        "temperature_grid": args.temperature_grid,
        "context": args.context,
        "stride": args.stride,
        "batch_size": args.batch_size,
        "nprobe": args.nprobe,
    }


def run_build(args: argparse.Namespace) -> int:
    from ..applications.knnlm.datastore import run_build_datastore
    from ..applications.knnlm.settings import BuildSettings

    lm = model_from_args(args)
    check_context(lm, "--context", args.context)
    r = run_build_datastore(
        lm,
        _tokens(lm, args.data, args),
        args.out,
        BuildSettings(**_build_kwargs(args)),
        ",".join(site_list(args.sites)),
        " + ".join(args.data),
        not args.quiet,
    )
    print(
        f"datastore {r.folder}: {r.n_keys} keys from {r.n_tokens} tokens, sites {r.sites}; "
        f"{r.shards_computed} shards computed, {r.shards_reused} reused; {r.seconds:.1f} s "
        f"(forward {r.forward_seconds:.1f} s, {r.tokens_per_second:.0f} keys/s)"
    )
    for site, info in r.index.items():
        print(f"index {site}: {info}")
    return 0


def _write_eval(result, out: Path) -> list[Path]:
    from ..io.results import write_result

    return write_result(out, "knnlm_eval", result)


def run_eval(args: argparse.Namespace) -> int:
    from ..applications.knnlm import Datastore, evaluate_knnlm
    from ..applications.knnlm.evaluation import run_evaluate_knnlm
    from ..applications.knnlm.settings import EvalSettings
    from ..io.provenance import note_call

    check_out(args, "knnlm_eval.json")
    lm = model_from_args(args)
    check_context(lm, "--context", args.context)
    store = Datastore.open(args.datastore, verify=args.verify)
    sites = site_list(args.sites) or None
    tokens, source, progress = _tokens(lm, args.data, args), " + ".join(args.data), not args.quiet
    settings = EvalSettings(**_eval_kwargs(args))
    result = run_evaluate_knnlm(lm, store, tokens, settings, sites, source, progress)
    keywords = {"source": source, "sites": sites, "progress": progress} | _eval_kwargs(args)
    note_call(result, evaluate_knnlm, (lm, store, tokens), keywords)
    print(result.table())
    paths = _write_eval(result, out_dir(args))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def run_select(args: argparse.Namespace) -> int:
    from ..applications.knnlm import select_key
    from ..applications.knnlm.select import run_select_key
    from ..applications.knnlm.settings import BuildSettings, EvalSettings, Profiling
    from ..io.provenance import note_call, settings_keywords
    from ..io.results import write_result

    for flag, value in (("--data", args.data), ("--eval-data", args.eval_data)):
        if not value:
            raise RepdispError(f"knnlm select needs {flag}")
    if len(args.chunks) != 1:
        raise RepdispError(f"knnlm select profiles one N; got --chunks {args.chunks}")
    check_out(args, "knnlm_select.json")
    lm = model_from_args(args)
    check_context(lm, "--context", args.context)
    train = _tokens(lm, args.data, args)
    held_out = _tokens(lm, args.eval_data, args)
    out = out_dir(args)
    sites = ["final-block" if x == "auto" else x for x in site_list(args.sites)]
    profiling = Profiling(
        sites=profile_sites(sites),
        chunks=args.chunks[0],
        seeds=args.num_seeds,
        chunk_len=args.chunk_len,
        train_source=" + ".join(args.data),
        eval_source=" + ".join(args.eval_data),
        cache=not args.no_cache,
        progress=not args.quiet,
    )
    build, evaluate = _build_kwargs(args), _eval_kwargs(args)
    folder = out / "datastore"
    report = run_select_key(
        lm, train, held_out, folder, profiling, BuildSettings(**build), EvalSettings(**evaluate)
    )
    keywords = settings_keywords(profiling) | {"build_kwargs": build, "eval_kwargs": evaluate}
    note_call(report, select_key, (lm, train, held_out, folder), keywords)
    print(report.table())
    paths = write_result(out, "knnlm_select", report)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
