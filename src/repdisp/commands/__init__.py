"""Command groups of the CLI, one module each (``register(sub)``); shared options live in
``options``. Command modules import nothing heavy at module level: the parser is built without
torch, scipy, transformers or matplotlib, and each command imports its work when it runs."""

from __future__ import annotations

import argparse

from .options import (
    add_data_options,
    add_model_options,
    add_output_options,
    add_sampling_options,
    model_from_args,
)


def add_model_args(p: argparse.ArgumentParser, multiple: bool = False) -> None:
    """Older name of ``options.add_model_options``."""
    add_model_options(p, multiple=multiple)


def add_data_args(p: argparse.ArgumentParser, segments: int = 200, seq_len: int = 256) -> None:
    """Older name: ``options.add_data_options`` + ``add_sampling_options`` + --no-cache/--quiet."""
    add_data_options(p)
    add_sampling_options(p, segments, seq_len)
    g = p.add_argument_group("run options")
    g.add_argument("--no-cache", action="store_true", help="do not read or write extraction shards")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


__all__ = [
    "add_data_args",
    "add_data_options",
    "add_model_args",
    "add_model_options",
    "add_output_options",
    "add_sampling_options",
    "model_from_args",
]
