"""repdisp ppl-vs-dispersion / layers / compare / report: the paper's §2.2 analyses."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import RepdispError
from . import checks
from .options import (
    add_binning_options,
    add_bootstrap_option,
    add_data_options,
    add_model_options,
    add_output_options,
    add_sampling_options,
    add_site_option,
    check_out,
    check_out_folder,
    model_from_args,
    one_site,
    out_dir,
    sampling_from_args,
    site_list,
    statistics_from_args,
)


def _common(p: argparse.ArgumentParser, command: str, name: str, multiple_data: bool = False):
    add_data_options(p, multiple=multiple_data)
    g = add_sampling_options(p, segments=600, seq_len=128)
    g.add_argument(
        "--pooling",
        default="last",
        choices=("last", "mean"),
        help="vector per segment for the 'across' mode: last token (paper default) or mean",
    )
    add_bootstrap_option(g)
    _output(p, command, name)
    return g


def _output(
    p: argparse.ArgumentParser, command: str, name: str, cache: bool = True, quiet: bool = True
) -> None:
    o = add_output_options(p, command, "NAME.json, NAME.csv, NAME.png", cache=cache, quiet=quiet)
    o.add_argument("--name", default=name, help="file name stem in --out")


def _loader(args: argparse.Namespace):
    return lambda spec: model_from_args(args, spec)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ppl-vs-dispersion",
        help="perplexity-binned dispersion (Algorithm 1) and its correlation with perplexity",
    )
    add_model_options(p, multiple=True)
    g = _common(p, "ppl-vs-dispersion", "ppl_vs_dispersion", multiple_data=True)
    add_binning_options(g)
    add_site_option(g, what="the one site to read")
    g.add_argument(
        "--save-segments",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write one row per segment and series as NAME_segments.parquet",
    )
    g.add_argument(
        "--last-token",
        action="store_true",
        help="bin by last-token perplexity at each --contexts length (Fig. 4)",
    )
    g.add_argument(
        "--contexts",
        type=checks.int_list(1),
        default=[16, 64, 128, 256],
        help="context lengths for --last-token, comma list",
    )
    p.set_defaults(func=run_ppl)

    q = sub.add_parser("layers", help="perplexity vs dispersion at every chosen layer, one pass")
    add_model_options(q)
    g = _common(q, "layers", "layers")
    add_binning_options(g)
    add_site_option(g, default="all")
    q.set_defaults(func=run_layers)

    c = sub.add_parser("compare", help="dispersion of several models on the same segments")
    add_model_options(c, multiple=True)
    g = _common(c, "compare", "compare")
    add_site_option(g, what="the one site to read")
    c.set_defaults(func=run_compare)

    m = sub.add_parser(
        "merge-ppl", help="plot the series of several ppl-vs-dispersion results in one figure"
    )
    m.add_argument("results", nargs="+", help="ppl-vs-dispersion JSON files")
    _output(m, "merge-ppl", "ppl_vs_dispersion_merged", cache=False, quiet=False)
    m.set_defaults(func=run_merge)

    r = sub.add_parser("report", help="render every result in a folder into one HTML page")
    r.add_argument("folder", help="folder of JSON/CSV/PNG results (searched recursively)")
    r.add_argument(
        "--out",
        metavar="DIR",
        help="folder for report.html (default: FOLDER itself; the page is rebuilt each time)",
    )
    r.add_argument("--title", help="page title (default: the folder name)")
    r.set_defaults(func=run_report)


def _write(args: argparse.Namespace, result) -> None:
    """JSON (with provenance), CSV tables, PNG figure and per-segment Parquet into --out."""
    from ..io.results import write_result

    paths = write_result(out_dir(args), args.name, result)
    print(result.table())
    print("wrote " + ", ".join(str(p) for p in paths))


def run_ppl(args: argparse.Namespace) -> int:
    from ..analyses import ppl_dispersion as ppl_mod
    from ..core.settings import SeriesReading
    from ..io.provenance import note_call, settings_keywords

    site = one_site(args, "ppl-vs-dispersion")
    check_out(args, f"{args.name}.json")
    reading = SeriesReading(
        site=site,
        pooling=args.pooling,
        last_token=args.last_token,
        contexts=args.contexts,
        per_segment=args.save_segments,
    )
    sampling, stats, load = sampling_from_args(args), statistics_from_args(args), _loader(args)
    result = ppl_mod.run_ppl_vs_dispersion(args.model, args.data, reading, sampling, stats, load)
    keywords = {"sampling": sampling, "stats": stats, "load": load} | settings_keywords(reading)
    note_call(result, ppl_mod.ppl_vs_dispersion, (args.model, args.data), keywords)
    _write(args, result)
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from ..analyses import ppl_dispersion as ppl_mod
    from ..io.results import load_result

    check_out(args, f"{args.name}.json")
    results = []
    for path in args.results:
        try:
            r = load_result(path)
        except RepdispError as e:
            raise RepdispError(f"{path}: not a ppl-vs-dispersion result ({e})") from None
        if isinstance(r, dict):  # a folder: its one ppl-vs-dispersion result
            found = [x for x in r.values() if isinstance(x, ppl_mod.PplDispersionResult)]
            if len(found) != 1:
                raise RepdispError(f"{path}: give one ppl-vs-dispersion JSON file")
            r = found[0]
        if not isinstance(r, ppl_mod.PplDispersionResult):  # a file from before `kind`
            try:
                r = ppl_mod.PplDispersionResult.from_dict(r.to_dict())
            except (KeyError, TypeError, ValueError, AttributeError):
                raise RepdispError(f"{path}: not a ppl-vs-dispersion result") from None
        results.append(r)
    result = ppl_mod.merge(results)
    _write(args, result)
    return 0


def run_layers(args: argparse.Namespace) -> int:
    from ..analyses import layers as layers_mod
    from ..core.distributed import from_env

    check_out(args, f"{args.name}.json")
    result = layers_mod.layers(
        args.model,
        args.data,
        sites=site_list(args.sites),
        sampling=sampling_from_args(args),
        stats=statistics_from_args(args),
        pooling=args.pooling,
        load=_loader(args),
    )
    if from_env().is_main:  # under torchrun rank 0 alone writes (the others return 0)
        _write(args, result)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from ..analyses import compare as compare_mod

    site = one_site(args, "compare")
    check_out(args, f"{args.name}.json")
    result = compare_mod.compare_models(
        args.model,
        args.data,
        sampling=sampling_from_args(args),
        pooling=args.pooling,
        site=site,
        bootstrap=args.bootstrap,
        load=_loader(args),
    )
    _write(args, result)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from ..io.report import write_report

    check_out_folder(args.out)
    out = Path(args.out) / "report.html" if args.out else None
    print(f"wrote {write_report(args.folder, out, args.title)}")
    return 0
