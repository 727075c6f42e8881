"""repdisp knn-keys: the sub-layer dispersion profile that picks the kNN-LM key (Table 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..applications.knn_keys import plot_profile, profile_keys
from ..core.corpus import make_segments
from ..core.errors import RepdispError
from ..io.results import save_figure, write_csv, write_json
from . import add_model_args, check_context, checks, model_from_args

_source = checks.nonempty("a file, folder, built-in or hf:NAME")


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RepdispError(f"expected a comma list of integers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("knn-keys", help="dispersion of candidate kNN-LM keys (h_att vs h_ffn)")
    add_model_args(p)
    p.add_argument(
        "--data", default="python-docs", type=_source, help="text source (as in measure)"
    )
    p.add_argument("--text-field", default="text")
    p.add_argument("--split", help="split of an hf: dataset (default test)")
    p.add_argument("--encoding-errors", default="strict", choices=("strict", "replace"))
    p.add_argument(
        "--chunks",
        default="10,50,100",
        type=checks.int_list(2),
        help="N values, comma list (10,50,100)",
    )
    p.add_argument(
        "--seeds", type=checks.positive_int, default=10, help="draws of N chunks per N (10)"
    )
    p.add_argument(
        "--chunk-len", type=checks.int_at_least(2), default=512, help="tokens per chunk (512)"
    )
    p.add_argument(
        "--sites",
        default="final-block",
        help="final-block (last block's h_att, h_ffn) | all (every block) | a site list",
    )
    p.add_argument("--batch-size", type=checks.positive_int, default=8)
    p.add_argument("--no-cache", action="store_true", help="do not read or write extraction shards")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", help="folder for knn_keys.json / .csv / .png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    lm = model_from_args(args)
    check_context(lm, "--chunk-len", args.chunk_len)
    windows = make_segments(
        lm.tokenizer,
        args.data,
        None,
        args.chunk_len,
        text_field=args.text_field,
        encoding_errors=args.encoding_errors,
    )
    profile = profile_keys(
        lm,
        windows,
        int_list(args.chunks),
        args.seeds,
        args.sites,
        args.batch_size,
        cache=not args.no_cache,
        progress=not args.quiet,
    )
    print(profile.table())
    if args.out:
        out = Path(args.out)
        write_json(out / "knn_keys.json", profile.to_dict())
        write_csv(out / "knn_keys.csv", profile.csv_rows())
        save_figure(plot_profile(profile), out / "knn_keys.png")
        print(f"wrote {out}/knn_keys.{{json,csv,png}}")
    return 0
