"""repdisp ppl-vs-dispersion / layers / compare / report: the paper's §2.2 analyses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..analyses import compare as compare_mod
from ..analyses import layers as layers_mod
from ..analyses import ppl_dispersion as ppl_mod
from ..core.errors import RepdispError
from ..io.report import write_report
from ..io.results import save_figure, write_csv, write_json
from . import add_data_args, add_model_args, model_from_args


def _common(p: argparse.ArgumentParser, name: str, segments: int = 600) -> None:
    add_data_args(p, segments=segments, seq_len=128)
    p.add_argument(
        "--pooling",
        default="last",
        choices=("last", "mean"),
        help="vector per segment for the 'across' mode: last token (paper default) or mean",
    )
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for CIs")
    p.add_argument("--out", required=True, help="folder for the JSON, CSV and PNG files")
    p.add_argument("--name", default=name, help=f"file name stem in --out (default {name})")


def _binning(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bin-size", type=int, default=50, help="segments per bin, B (50)")
    p.add_argument("--bins", type=int, default=10, help="bins chosen by Algorithm 1, K (10)")
    p.add_argument(
        "--stats-reps",
        type=int,
        default=1000,
        help="bootstrap replicates over segments for the segment-level statistics (1000; 0: off)",
    )
    p.add_argument(
        "--permutations", type=int, default=1000, help="permutations for p_perm (1000; 0: off)"
    )
    p.add_argument(
        "--curve-bins", type=int, default=50, help="equal-count bins of the many-bins curve (50)"
    )


def _sampling(args: argparse.Namespace) -> ppl_mod.Sampling:
    return ppl_mod.Sampling(
        args.segments,
        args.seq_len,
        args.seed,
        args.batch_size,
        args.skip_first,
        not args.no_cache,
        not args.quiet,
        args.text_field,
        args.encoding_errors,
    )


def _loader(args: argparse.Namespace):
    return lambda spec: model_from_args(args, spec)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ppl-vs-dispersion",
        help="perplexity-binned dispersion (Algorithm 1) and its correlation with perplexity",
        conflict_handler="resolve",  # --data below replaces the single-source one
    )
    add_model_args(p, multiple=True)
    _common(p, "ppl_vs_dispersion")
    p.add_argument("--data", action="append", help="text source (see measure); repeat for several")
    p.set_defaults(func=run_ppl)
    _binning(p)
    p.add_argument("--site", default="final", help="site to read (final)")
    p.add_argument(
        "--last-token",
        action="store_true",
        help="bin by last-token perplexity at each --contexts length (Fig. 4)",
    )
    p.add_argument(
        "--contexts",
        default="16,64,128,256",
        help="context lengths for --last-token (16,64,128,256)",
    )

    q = sub.add_parser("layers", help="perplexity vs dispersion at every chosen layer, one pass")
    add_model_args(q)
    _common(q, "layers")
    _binning(q)
    q.add_argument("--sites", default="all", help="all | all.attn | everything | 0,3,9,final (all)")
    q.set_defaults(func=run_layers)

    c = sub.add_parser("compare", help="dispersion of several models on the same segments")
    add_model_args(c, multiple=True)
    _common(c, "compare")
    c.add_argument("--site", default="final", help="site to read (final)")
    c.set_defaults(func=run_compare)

    m = sub.add_parser(
        "merge-ppl", help="plot the series of several ppl-vs-dispersion results in one figure"
    )
    m.add_argument("results", nargs="+", help="ppl-vs-dispersion JSON files")
    m.add_argument("--out", required=True, help="folder for the JSON, CSV and PNG files")
    m.add_argument("--name", default="ppl_vs_dispersion_merged", help="file name stem in --out")
    m.set_defaults(func=run_merge)

    r = sub.add_parser("report", help="render every result in a folder into one HTML page")
    r.add_argument("folder", help="folder of JSON/CSV/PNG results (searched recursively)")
    r.add_argument("--out", help="HTML file to write (default FOLDER/report.html)")
    r.add_argument("--title", help="page title")
    r.set_defaults(func=run_report)


def _write(args: argparse.Namespace, result, fig, tables: dict[str, list] | None = None) -> None:
    """JSON, CSV(s) and PNG into --out; binned results default to their bin and correlation rows."""
    if tables is None:
        tables = {"": result.bin_rows(), "_correlations": result.correlation_rows()}
        if getattr(result, "stats_rows", None) and result.stats_rows():
            tables["_stats"] = result.stats_rows()
        if getattr(result, "curve_rows", None) and result.curve_rows():
            tables["_curve"] = result.curve_rows()
    out = Path(args.out)
    paths = [write_json(out / f"{args.name}.json", result)]
    paths += [write_csv(out / f"{args.name}{suffix}.csv", rows) for suffix, rows in tables.items()]
    paths.append(save_figure(fig, out / f"{args.name}.png"))
    print(result.table())
    print("wrote " + ", ".join(str(p) for p in paths))


def run_ppl(args: argparse.Namespace) -> int:
    contexts = [int(c) for c in args.contexts.split(",") if c.strip()]
    result = ppl_mod.ppl_vs_dispersion(
        args.model,
        args.data or ["python-docs"],
        _sampling(args),
        args.bin_size,
        args.bins,
        args.pooling,
        args.site,
        args.last_token,
        contexts,
        args.bootstrap,
        _loader(args),
        args.stats_reps,
        args.permutations,
        args.curve_bins,
    )
    _write(args, result, ppl_mod.plot(result))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    results = []
    for path in args.results:
        try:
            results.append(
                ppl_mod.PplDispersionResult.from_dict(json.loads(Path(path).read_text()))
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RepdispError(f"{path}: not a ppl-vs-dispersion result ({e})") from None
    result = ppl_mod.merge(results)
    _write(args, result, ppl_mod.plot(result))
    return 0


def run_layers(args: argparse.Namespace) -> int:
    result = layers_mod.layers(
        args.model,
        args.data,
        args.sites,
        _sampling(args),
        args.bin_size,
        args.bins,
        args.pooling,
        args.bootstrap,
        _loader(args),
        args.stats_reps,
        args.permutations,
        args.curve_bins,
    )
    _write(args, result, layers_mod.plot(result))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    result = compare_mod.compare(
        args.model,
        args.data,
        _sampling(args),
        args.pooling,
        args.site,
        args.bootstrap,
        _loader(args),
    )
    _write(args, result, compare_mod.plot(result), {"": result.rows()})
    return 0


def run_report(args: argparse.Namespace) -> int:
    print(f"wrote {write_report(args.folder, args.out, args.title)}")
    return 0
