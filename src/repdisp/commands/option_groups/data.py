"""Data, segment and site options: ``--data SOURCE`` (one, or repeatable), ``--text-field``,
``--encoding-errors``, ``--split``; the sampling group ``--segments --seq-len --seed
--batch-size [--skip-first]`` (parsed once into a ``core.sampling.Sampling`` by
``sampling_from_args``); ``--num-seeds``; ``--site`` (repeatable, each value a comma list:
``--site a,b --site c`` is three sites; TransformerLens names and ``hs:K`` also work)."""

from __future__ import annotations

import argparse
from typing import Any

from ...core.errors import RepdispError
from .. import checks
from .grammar import AppendAction, ListAction

DATA_HELP = (
    "text source: python-docs | python-code | FILE or FOLDER (.txt .jsonl .csv .parquet) | "
    "hf:NAME[:CONFIG]"
)
SITE_NAMES = (
    "embed, I.attn, I.ffn (I may be negative), final, all, all.attn, everything; TransformerLens "
    "names (blocks.I.hook_resid_mid) and hs:K (HF hidden_states[K]) also work; repeat or give a "
    "comma list"
)
SITE_HELP = "site(s) to read: " + SITE_NAMES

source_type = checks.nonempty("a file, a folder, a built-in or hf:NAME")


def add_data_options(
    p: argparse.ArgumentParser,
    multiple: bool = False,
    default: str | None = "python-docs",
    required: bool = False,
    help: str | None = None,
    text_options: bool = True,
) -> argparse._ArgumentGroup:
    """--data (one source, or repeatable with ``multiple``), --text-field, --encoding-errors."""
    g = p.add_argument_group("data options")
    text = help or DATA_HELP
    if multiple:
        g.add_argument(
            "--data",
            action=AppendAction,
            default=None if default is None else [default],
            required=required,
            type=source_type,
            metavar="SOURCE",
            help=text + "; repeat to join several",
        )
    else:
        g.add_argument(
            "--data",
            default=default,
            required=required,
            type=source_type,
            metavar="SOURCE",
            help=text,
        )
    if text_options:
        add_text_options(g)
    return g


def add_text_options(g: Any) -> None:
    g.add_argument(
        "--text-field",
        default="text",
        help="column holding the text in .jsonl/.csv/.parquet sources",
    )
    g.add_argument(
        "--encoding-errors",
        default="strict",
        choices=("strict", "replace"),
        help="bytes that are not UTF-8: strict = stop with an error, replace = U+FFFD",
    )
    g.add_argument("--split", help="split of an hf: dataset (default: test)")


def add_sampling_options(
    p: argparse.ArgumentParser,
    segments: int | None = 200,
    seq_len: int | None = 256,
    skip_first: bool = True,
) -> argparse._ArgumentGroup:
    """--segments --seq-len --seed --batch-size [--skip-first]."""
    g = p.add_argument_group("sampling options")
    if segments is not None:
        g.add_argument(
            "--segments", type=checks.int_at_least(2), default=segments, help="segments to sample"
        )
    if seq_len is not None:
        g.add_argument(
            "--seq-len", type=checks.int_at_least(2), default=seq_len, help="tokens per segment"
        )
    add_seed_option(g)
    add_batch_option(g)
    if skip_first:
        g.add_argument(
            "--skip-first",
            type=checks.nonneg_int,
            default=1,
            help="positions left out of token pooling: the BOS or outlier first token",
        )
    return g


def sampling_from_args(args: argparse.Namespace) -> Any:
    """The ``core.sampling.Sampling`` of a command with the sampling, data and output options:
    built once from the flags and passed down whole."""
    from ...core.sampling import Sampling

    return Sampling(
        segments=args.segments,
        seq_len=args.seq_len,
        seed=args.seed,
        batch_size=args.batch_size,
        skip_first=args.skip_first,
        cache=not args.no_cache,
        progress=not args.quiet,
        text_field=args.text_field,
        encoding_errors=args.encoding_errors,
        split=getattr(args, "split", None),
        trust_remote_code=getattr(args, "trust_remote_code", False),
    )


def add_seed_option(g: Any, help: str = "sampling seed") -> None:
    g.add_argument("--seed", type=checks.seed, default=0, help=help)


def add_batch_option(g: Any) -> None:
    g.add_argument(
        "--batch-size", type=checks.positive_int, default=8, help="sequences per forward pass"
    )


def add_seeds_options(g: Any, default: int) -> None:
    """--num-seeds N (seeds 0..N-1); ``--seeds`` is kept as a hidden, deprecated spelling."""
    g.add_argument(
        "--num-seeds",
        type=checks.positive_int,
        default=default,
        metavar="N",
        help="repeat the draw with seeds 0..N-1 and report mean and spread",
    )
    g.add_argument("--seeds", dest="num_seeds", type=checks.positive_int, help=argparse.SUPPRESS)


def site_list(values: str | list[str] | None) -> list[str]:
    """Flatten repeated and comma-separated site values (also usable from Python)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [s.strip() for v in values for s in str(v).split(",") if s.strip()]


def add_site_option(
    p: Any, default: str | list[str] | None = "final", what: str = "site(s) to read"
) -> None:
    """--site, repeatable and comma lists (``--sites`` is the same option); the help is ``what``
    followed by the shared list of site names."""
    if isinstance(default, str):
        default = [default]
    p.add_argument(
        "--site",
        "--sites",
        dest="sites",
        action=ListAction,
        default=default,
        metavar="SITE",
        help=f"{what}: {SITE_NAMES}",
    )


def one_site(args: argparse.Namespace, command: str) -> str:
    """The single site of a command that reads one."""
    sites = site_list(args.sites)
    if len(sites) != 1:
        raise RepdispError(f"{command} reads one site; got {len(sites)}: {', '.join(sites)}")
    return sites[0]
