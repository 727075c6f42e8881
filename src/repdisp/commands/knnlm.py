"""repdisp knnlm build | eval | select: a kNN-LM whose key is any site of the model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..applications.knnlm import (
    Datastore,
    build_datastore,
    evaluate,
    load_tokens,
    plot_eval,
    select_key,
)
from ..core.errors import RepdispError
from ..io.results import save_figure, write_csv, write_json
from . import add_model_args, check_context, checks, model_from_args

_source = checks.nonempty("a file, folder, built-in or hf:NAME")

DATA_HELP = "text source (as in measure); SOURCE@START:END takes a token range; repeat to join"


def float_list(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RepdispError(f"expected a comma list of numbers, got {text!r}") from None


def _text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-field", default="text")
    p.add_argument("--split", help="split of an hf: dataset (default test)")
    p.add_argument("--encoding-errors", default="strict", choices=("strict", "replace"))
    p.add_argument("--batch-size", type=checks.positive_int, default=4)
    p.add_argument("--quiet", action="store_true")


def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--context", type=checks.int_at_least(2), default=512, help="tokens per window (512)"
    )
    p.add_argument(
        "--stride",
        type=checks.positive_int,
        default=256,
        help="window step; new targets per window",
    )
    p.add_argument(
        "--shard-windows", type=checks.positive_int, default=64, help="windows per resumable shard"
    )
    p.add_argument("--index", default="auto", choices=("auto", "flat", "ivfpq"))


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=checks.positive_int, default=1024, help="neighbours (1024)")
    p.add_argument(
        "--lmbda", type=checks.unit_float, default=0.25, help="interpolation weight λ (0.25)"
    )
    p.add_argument(
        "--temperature", type=checks.positive_float, default=1.0, help="softmax temperature (1)"
    )
    p.add_argument(
        "--lmbda-grid",
        type=checks.float_list(checks.unit_float),
        help="also score these λ, e.g. 0,0.05,0.1,0.25,0.5",
    )
    p.add_argument(
        "--temperature-grid",
        type=checks.float_list(checks.positive_float),
        help="also score these temperatures",
    )
    p.add_argument("--nprobe", type=checks.positive_int, default=32, help="IVF lists searched (32)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("knnlm", help="kNN-LM: build a datastore, evaluate, select the key site")
    knn = p.add_subparsers(dest="knnlm_command", required=True)

    b = knn.add_parser("build", help="datastore of (site vector -> next token) + FAISS index")
    add_model_args(b)
    b.add_argument("--data", action="append", required=True, type=_source, help=DATA_HELP)
    b.add_argument("--site", default="-1.ffn", help="key site(s), comma list (-1.ffn)")
    b.add_argument("--out", required=True, help="datastore folder (resumes if interrupted)")
    _text_args(b)
    _build_args(b)
    b.set_defaults(func=run_build)

    e = knn.add_parser("eval", help="base and kNN-LM perplexity on held-out text")
    add_model_args(e)
    e.add_argument("--datastore", required=True)
    e.add_argument("--data", action="append", required=True, type=_source, help=DATA_HELP)
    e.add_argument("--site", help="sites of the datastore to use (default: all)")
    e.add_argument("--context", type=checks.int_at_least(2), default=512)
    e.add_argument("--stride", type=checks.positive_int, default=256)
    e.add_argument("--out", help="folder for knnlm_eval.json / .csv / .png")
    _text_args(e)
    _eval_args(e)
    e.set_defaults(func=run_eval)

    s = knn.add_parser("select", help="dispersion profile, then kNN-LM per candidate site")
    add_model_args(s)
    s.add_argument("--train", action="append", required=True, type=_source, help=DATA_HELP)
    s.add_argument("--eval", action="append", required=True, type=_source, help=DATA_HELP)
    s.add_argument("--sites", default="auto", help="auto (last block h_att, h_ffn) | all | list")
    s.add_argument(
        "--chunks",
        type=checks.int_at_least(2),
        default=100,
        help="N chunks for the dispersion (100)",
    )
    s.add_argument("--seeds", type=checks.positive_int, default=5)
    s.add_argument("--chunk-len", type=checks.int_at_least(2), default=256)
    s.add_argument("--no-cache", action="store_true", help="do not cache the profile's extraction")
    s.add_argument("--out", required=True, help="folder: datastore/ + knnlm_select.*")
    _text_args(s)
    _build_args(s)
    _eval_args(s)
    s.set_defaults(func=run_select)


def _tokens(lm, sources: list[str], args: argparse.Namespace):
    return load_tokens(
        lm, sources, text_field=args.text_field, encoding_errors=args.encoding_errors
    )


def _eval_kwargs(args: argparse.Namespace) -> dict:
    return {
        "k": args.k,
        "lmbda": args.lmbda,
        "temperature": args.temperature,
        "lmbda_grid": float_list(args.lmbda_grid),
        "temperature_grid": float_list(args.temperature_grid),
        "context": args.context,
        "stride": args.stride,
        "batch_size": args.batch_size,
        "nprobe": args.nprobe,
    }


def run_build(args: argparse.Namespace) -> int:
    lm = model_from_args(args)
    check_context(lm, "--context", args.context)
    r = build_datastore(
        lm,
        _tokens(lm, args.data, args),
        args.out,
        args.site,
        " + ".join(args.data),
        args.context,
        args.stride,
        args.batch_size,
        args.shard_windows,
        args.index,
        progress=not args.quiet,
    )
    print(
        f"datastore {r.folder}: {r.n_keys} keys from {r.n_tokens} tokens, sites {r.sites}; "
        f"{r.shards_computed} shards computed, {r.shards_reused} reused; {r.seconds:.1f} s "
        f"(forward {r.forward_seconds:.1f} s, {r.tokens_per_second:.0f} keys/s)"
    )
    for site, info in r.index.items():
        print(f"index {site}: {info}")
    return 0


def _write_eval(result, out: Path) -> None:
    write_json(out / "knnlm_eval.json", result.to_dict())
    write_csv(out / "knnlm_eval.csv", result.rows())
    save_figure(plot_eval(result), out / "knnlm_eval.png")


def run_eval(args: argparse.Namespace) -> int:
    lm = model_from_args(args)
    check_context(lm, "--context", args.context)
    store = Datastore.open(args.datastore)
    sites = [x for x in args.site.split(",") if x.strip()] if args.site else None
    result = evaluate(
        lm,
        store,
        _tokens(lm, args.data, args),
        " + ".join(args.data),
        sites,
        progress=not args.quiet,
        **_eval_kwargs(args),
    )
    print(result.table())
    if args.out:
        _write_eval(result, Path(args.out))
        print(f"wrote {args.out}/knnlm_eval.{{json,csv,png}}")
    return 0


def run_select(args: argparse.Namespace) -> int:
    lm = model_from_args(args)
    check_context(lm, "--context", args.context)
    out = Path(args.out)
    report = select_key(
        lm,
        _tokens(lm, args.train, args),
        _tokens(lm, args.eval, args),
        out / "datastore",
        "final-block" if args.sites == "auto" else args.sites,
        args.chunks,
        args.seeds,
        args.chunk_len,
        " + ".join(args.train),
        " + ".join(args.eval),
        build_kwargs={
            "context": args.context,
            "stride": args.stride,
            "batch_size": args.batch_size,
            "shard_windows": args.shard_windows,
            "index": args.index,
        },
        eval_kwargs=_eval_kwargs(args),
        cache=not args.no_cache,
        progress=not args.quiet,
    )
    print(report.table())
    write_json(out / "knnlm_select.json", report.to_dict())
    write_csv(out / "knnlm_select.csv", report.rows())
    save_figure(plot_eval(report.evaluation), out / "knnlm_select.png")
    print(f"wrote {out}/knnlm_select.{{json,csv,png}}")
    return 0
