"""Command groups of the CLI, one module each, plus the option groups they share."""

from __future__ import annotations

import argparse

from ..core.models import DEFAULT_MODEL, DEVICES, DTYPES, LoadedModel, load_model


def add_model_args(p: argparse.ArgumentParser, multiple: bool = False) -> None:
    """--model (one or several), --device, --dtype, --trust-remote-code, --allow-pickle."""
    if multiple:
        p.add_argument(
            "--model",
            action="append",
            required=True,
            help="bundled name, folder, .gguf file or hub id; repeat for several",
        )
    else:
        p.add_argument(
            "--model",
            default=DEFAULT_MODEL,
            help=f"bundled name, folder, .gguf file or hub id (default {DEFAULT_MODEL})",
        )
    p.add_argument(
        "--device",
        default="auto",
        choices=DEVICES + ("cuda:0",),
        metavar="DEVICE",
        help="auto|cpu|cuda (default auto)",
    )
    p.add_argument(
        "--dtype", default="auto", choices=DTYPES, help="auto = bfloat16 on CUDA, float32 on CPU"
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a hub model to run its own code (off by default)",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow pickled .bin/.pt weights (refused by default)",
    )


def model_from_args(args: argparse.Namespace, spec: str | None = None) -> LoadedModel:
    return load_model(
        spec or args.model,
        args.device,
        args.dtype,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
    )


def add_data_args(p: argparse.ArgumentParser, segments: int = 200, seq_len: int = 256) -> None:
    """--data, --text-field, --encoding-errors, --segments, --seq-len, --seed, --batch-size."""
    p.add_argument(
        "--data",
        default="python-docs",
        help="python-docs | python-code | FILE/FOLDER (.txt .jsonl .csv .parquet) | "
        "hf:NAME[:CONFIG] (default python-docs)",
    )
    p.add_argument(
        "--text-field", default="text", help="field holding the text in jsonl/csv/parquet"
    )
    p.add_argument(
        "--encoding-errors",
        default="strict",
        choices=("strict", "replace"),
        help="what to do with bytes that are not UTF-8 (default: stop with an error)",
    )
    p.add_argument(
        "--segments", type=int, default=segments, help=f"segments to sample ({segments})"
    )
    p.add_argument("--seq-len", type=int, default=seq_len, help=f"tokens per segment ({seq_len})")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (0)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--skip-first",
        type=int,
        default=1,
        help="positions left out of token pooling: the BOS or outlier first token (1)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write extraction shards")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
