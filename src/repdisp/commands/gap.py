"""repdisp gap: rank checkpoints by the dispersion gap of their output embeddings."""

from __future__ import annotations

import argparse

from .options import add_model_options, add_output_options, check_out, out_dir

# applications.gap.DOMAINS / REFERENCES / METRICS (not imported here); tests check they agree
DOMAINS = ("digits", "python", "legal")
REFERENCES = ("everyday",)
METRICS = ("cosine", "euclidean")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gap",
        help="dispersion gap of the output-embedding rows of domain tokens (no model load)",
    )
    add_model_options(p, multiple=True, loading=False)
    g = p.add_argument_group("gap options")
    g.add_argument(
        "--domain", required=True, help=f"{' | '.join(DOMAINS)} | FILE of words (the set T)"
    )
    g.add_argument(
        "--reference",
        default="everyday",
        help=f"{' | '.join(REFERENCES)} | FILE of words (the set T')",
    )
    g.add_argument("--metric", default="cosine", choices=METRICS, help="metric for ranking")
    g.add_argument(
        "--accuracy",
        action="append",
        help="MODEL=ACC[,MODEL=ACC...]: correlate G with these accuracies (needs 3+ models)",
    )
    add_output_options(p, "gap", "gap.json/.csv/.png", cache=False, quiet=False)
    p.set_defaults(func=run_gap)


def run_gap(args: argparse.Namespace) -> int:
    from ..applications.gap import parse_accuracy, plot_gap, rank_by_gap
    from ..io.results import save_figure, write_csv, write_json

    check_out(args, "gap.json")
    res = rank_by_gap(
        args.model,
        args.domain,
        reference=args.reference,
        metric=args.metric,
        accuracy=parse_accuracy(args.accuracy),
    )
    print(res.table())
    out = out_dir(args)
    write_json(out / "gap.json", res)
    write_csv(out / "gap.csv", [c.row() for c in res.checkpoints])
    save_figure(plot_gap(res), out / "gap.png")
    print(f"wrote {out}/gap.json, gap.csv, gap.png")
    return 0
