"""repdisp gap: rank checkpoints by the dispersion gap of their output embeddings."""

from __future__ import annotations

import argparse

from ..applications.gap import DOMAINS, METRICS, REFERENCES, parse_accuracy, rank_by_gap
from ..io.results import write_result


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gap",
        help="dispersion gap of the output-embedding rows of domain tokens (no model load)",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        help="bundled name, safetensors folder or .gguf file; repeat for several",
    )
    p.add_argument(
        "--domain", required=True, help=f"{' | '.join(DOMAINS)} | FILE of words (the set T)"
    )
    p.add_argument(
        "--reference",
        default="everyday",
        help=f"{' | '.join(REFERENCES)} | FILE of words (the set T'; default everyday)",
    )
    p.add_argument(
        "--metric", default="cosine", choices=METRICS, help="metric for ranking (cosine)"
    )
    p.add_argument(
        "--accuracy",
        action="append",
        help="MODEL=ACC[,MODEL=ACC...]: correlate G with these accuracies (needs 3+ models)",
    )
    p.add_argument("--out", default="repdisp-out", help="output folder")
    p.set_defaults(func=run_gap)


def run_gap(args: argparse.Namespace) -> int:
    res = rank_by_gap(
        args.model,
        args.domain,
        reference=args.reference,
        metric=args.metric,
        accuracy=parse_accuracy(args.accuracy),
    )
    print(res.table())
    paths = write_result(args.out, "gap", res)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
