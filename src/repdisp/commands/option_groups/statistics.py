"""Statistics options of the binned analyses (``ppl-vs-dispersion``, ``layers``): Algorithm 1's
``--bin-size`` B and ``--bins`` K, ``--bootstrap`` resamples of the bins for the correlation
CIs, ``--stats-reps`` segment bootstraps and ``--permutations`` for the segment-level
statistics, ``--curve-bins`` of the many-bins curve. ``statistics_from_args`` parses them once
into a ``core.settings.Statistics`` (seeded by ``--seed``), which is passed down whole."""

from __future__ import annotations

import argparse
from typing import Any

from .. import checks


def add_bootstrap_option(g: Any) -> None:
    g.add_argument(
        "--bootstrap", type=checks.nonneg_int, default=2000, help="bootstrap resamples for the CIs"
    )


def add_binning_options(g: Any) -> None:
    """--bin-size --bins --stats-reps --permutations --curve-bins (``--bootstrap`` apart: the
    commands without bins have it too)."""
    g.add_argument(
        "--bin-size", type=checks.int_at_least(2), default=50, help="segments per bin, B"
    )
    g.add_argument(
        "--bins", type=checks.positive_int, default=10, help="bins chosen by Algorithm 1, K"
    )
    g.add_argument(
        "--stats-reps",
        type=checks.nonneg_int,
        default=1000,
        help="bootstrap replicates over segments for the segment-level statistics (0: off)",
    )
    g.add_argument(
        "--permutations",
        type=checks.nonneg_int,
        default=1000,
        help="permutations for the permutation p-value (0: off)",
    )
    g.add_argument(
        "--curve-bins",
        type=checks.int_at_least(2),
        default=50,
        help="equal-count bins of the many-bins curve",
    )


def statistics_from_args(args: argparse.Namespace) -> Any:
    """The ``core.settings.Statistics`` of a binned command, built (and validated) once."""
    from ...core.settings import Statistics

    return Statistics(
        bin_size=args.bin_size,
        n_bins=args.bins,
        bootstrap=args.bootstrap,
        stats_reps=args.stats_reps,
        permutations=args.permutations,
        curve_bins=args.curve_bins,
        seed=args.seed,
    )
