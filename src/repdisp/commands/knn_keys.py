"""repdisp knn-keys: the sub-layer dispersion profile that picks the kNN-LM key (Table 1)."""

from __future__ import annotations

import argparse

from ..applications.knnlm.keys import profile_keys
from ..core.corpus import make_segments
from ..core.errors import RepdispError
from ..io.results import write_result
from . import add_model_args, model_from_args


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RepdispError(f"expected a comma list of integers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("knn-keys", help="dispersion of candidate kNN-LM keys (h_att vs h_ffn)")
    add_model_args(p)
    p.add_argument("--data", default="python-docs", help="text source (as in measure)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--encoding-errors", default="strict", choices=("strict", "replace"))
    p.add_argument("--chunks", default="10,50,100", help="N values, comma list (10,50,100)")
    p.add_argument("--seeds", type=int, default=10, help="draws of N chunks per N (10)")
    p.add_argument("--chunk-len", type=int, default=512, help="tokens per chunk (512)")
    p.add_argument(
        "--sites",
        default="final-block",
        help="final-block (last block's h_att, h_ffn) | all (every block) | a site list",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-cache", action="store_true", help="do not read or write extraction shards")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", help="folder for knn_keys.json / .csv / .png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    lm = model_from_args(args)
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
        chunks=int_list(args.chunks),
        seeds=args.seeds,
        sites=args.sites,
        batch_size=args.batch_size,
        cache=not args.no_cache,
        progress=not args.quiet,
    )
    print(profile.table())
    if args.out:
        paths = write_result(args.out, "knn_keys", profile)
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0
