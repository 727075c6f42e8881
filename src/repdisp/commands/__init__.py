"""Command groups of the CLI, one module each, plus the option groups they share."""

from __future__ import annotations

import argparse

from ..core.corpus import load_texts
from ..core.errors import RepdispError
from ..core.models import DEFAULT_MODEL, DEVICES, DTYPES, LoadedModel, load_model
from . import checks

_model_spec = checks.nonempty("a bundled name, a folder, a .gguf file or a hub id")


def add_model_args(p: argparse.ArgumentParser, multiple: bool = False) -> None:
    """--model (one or several), --device, --dtype, --trust-remote-code, --allow-pickle."""
    if multiple:
        p.add_argument(
            "--model",
            action="append",
            required=True,
            type=_model_spec,
            help="bundled name, folder, .gguf file or hub id; repeat for several",
        )
    else:
        p.add_argument(
            "--model",
            default=DEFAULT_MODEL,
            type=_model_spec,
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


def check_data(args: argparse.Namespace) -> None:
    """Read every text source of the command (``--data``, ``--train``, ``--eval``) before the
    model loads, so a missing or malformed file fails in a second, not after the model load. The
    texts are remembered by ``load_texts``, so the run does not read them again."""
    if getattr(args, "_data_checked", False) or not hasattr(args, "text_field"):
        return
    args._data_checked = True
    sources = []
    for name in ("data", "train", "eval"):
        value = getattr(args, name, None)
        sources += value if isinstance(value, list) else [value] if value else []
    for spec in sources:
        head, sep, rng = spec.rpartition("@")  # knnlm's SOURCE@START:END token range
        if sep and ":" in rng and all(p.isdigit() or not p for p in rng.split(":", 1)):
            spec = head
        load_texts(spec, args.text_field, encoding_errors=args.encoding_errors)


def check_context(lm: LoadedModel, flag: str, tokens: int) -> None:
    """Refuse a window longer than the model's context (position embeddings would run out)."""
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and tokens > limit:
        raise RepdispError(f"{flag} {tokens} exceeds the model's context of {limit} tokens")


def model_from_args(args: argparse.Namespace, spec: str | None = None) -> LoadedModel:
    check_data(args)
    return load_model(
        spec or args.model, args.device, args.dtype, args.trust_remote_code, args.allow_pickle
    )


def add_data_args(p: argparse.ArgumentParser, segments: int = 200, seq_len: int = 256) -> None:
    """--data, --text-field, --encoding-errors, --segments, --seq-len, --seed, --batch-size."""
    p.add_argument(
        "--data",
        default="python-docs",
        type=checks.nonempty("a file, folder, built-in or hf:NAME"),
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
        "--segments",
        type=checks.int_at_least(2),
        default=segments,
        help=f"segments to sample ({segments})",
    )
    p.add_argument(
        "--seq-len",
        type=checks.int_at_least(2),
        default=seq_len,
        help=f"tokens per segment ({seq_len})",
    )
    p.add_argument("--seed", type=checks.seed, default=0, help="sampling seed (0)")
    p.add_argument("--batch-size", type=checks.positive_int, default=8)
    p.add_argument("--split", help="split of an hf: dataset (default test)")
    p.add_argument(
        "--skip-first",
        type=checks.nonneg_int,
        default=1,
        help="positions left out of token pooling: the BOS or outlier first token (1)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write extraction shards")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
