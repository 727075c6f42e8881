"""repdisp gap: rank checkpoints by the dispersion gap of their output embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..applications.gap import DOMAINS, METRICS, REFERENCES, gap, parse_accuracy, plot_gap
from ..core.errors import RepdispError
from ..io.results import save_figure, write_csv, write_json


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


def _check_word_file(flag: str, spec: str) -> None:
    """A word-list file must be UTF-8 text (checked before any model is read)."""
    path = Path(spec)
    if path.is_file():
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise RepdispError(f"{flag} {path}: not valid UTF-8 at byte {e.start}") from None


def run_gap(args: argparse.Namespace) -> int:
    _check_word_file("--domain", args.domain)
    _check_word_file("--reference", args.reference)
    res = gap(args.model, args.domain, args.reference, args.metric, parse_accuracy(args.accuracy))
    print(res.table())
    out = Path(args.out)
    write_json(out / "gap.json", res)
    write_csv(out / "gap.csv", [c.row() for c in res.checkpoints])
    save_figure(plot_gap(res), out / "gap.png")
    print(f"wrote {out}/gap.json, gap.csv, gap.png")
    return 0
