"""Shared pieces of the binned §2 analyses: one selected bin (``BinPoint``) with both dispersion
modes, the correlations over bins, and labels. How segments are drawn and extracted
(``Sampling``) lives in ``core.sampling``.

``bin_points`` measures each selected bin exactly (Eq. 1 over the bin's segment vectors,
and the mean within-segment dispersion); ``correlate`` gives Pearson and Spearman over bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.geometry import dispersion
from ..core.stats import Correlation, across_stats, correlation, within_stats
from .binning import BinSelection, select_bins

MODES = ("across", "within")
METHODS = ("pearson", "spearman")


def short_name(data: str) -> str:
    """A data source's label for legends: the file stem, or the name as given."""
    return Path(data).stem if ("/" in data or "." in data) and not data.startswith("hf:") else data


def model_label(name: str) -> str:
    """A model's label for plots: a folder's last component, or the name as given."""
    return Path(name).name if "/" in name else name


@dataclass
class BinPoint:
    """One selected bin: its index among all equal-count bins, size, mean perplexity, dispersions."""

    bin: int
    n: int
    mean_ppl: float
    across: float
    within: float


def bin_points(
    ppl: np.ndarray, vectors: np.ndarray, within: np.ndarray, sel: BinSelection
) -> list[BinPoint]:
    """Mean perplexity and both dispersions of each selected bin."""
    return [
        BinPoint(
            int(b), len(m), float(ppl[m].mean()), dispersion(vectors[m]), float(within[m].mean())
        )
        for b, m in zip(sel.chosen, sel.members, strict=True)
    ]


def correlate(
    points: list[BinPoint], reps: int = 2000, seed: int = 0
) -> dict[str, dict[str, Correlation]]:
    """Pearson and Spearman of bin mean perplexity vs each dispersion mode."""
    x = [p.mean_ppl for p in points]
    return {
        mode: {
            m: correlation(x, [getattr(p, mode) for p in points], m, reps, seed) for m in METHODS
        }
        for mode in MODES
    }


def stat_estimates(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The Estimate dicts of one mode's segment-level statistics (within or across)."""
    return [stats[k] for k in ("pearson", "spearman", "curve_spearman", "slope") if k in stats]


def stats_lines(stats: dict[str, Any], indent: str = "  ") -> list[str]:
    """Text lines for the segment-level statistics of one series or site."""
    lines = []
    for mode, st in stats.items():
        what = (
            f"segment-level, {st['reps']} bootstrap / {st['perms']} permutations"
            if mode == "within"
            else f"segments resampled and re-binned, {st['reps']} bootstrap / {st['perms']} "
            f"permutations; curve of {st['curve_bins']} bins"
        )
        lines.append(f"{indent}{mode} ({what}):")
        for e in stat_estimates(st):
            p = f" p={e['p_value']:.3g}" if np.isfinite(e["p_value"]) else ""
            pp = f" p_perm={e['p_perm']:.3g}" if np.isfinite(e["p_perm"]) else ""
            fmt = "+.4f" if e["name"].startswith("slope") else "+.3f"
            lines.append(
                f"{indent}  {e['name']:<20}{e['value']:{fmt}} [{e['ci_low']:{fmt}}, "
                f"{e['ci_high']:{fmt}}]{p}{pp}"
            )
    return lines


def segment_stats(
    ppl: np.ndarray,
    within: np.ndarray,
    vectors: list[np.ndarray],
    bin_size: int,
    n_bins: int,
    reps: int,
    perms: int,
    curve_bins: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Segment-level statistics (``repdisp.core.stats``) of each (within, vectors) pair; the
    across statistics re-bin with Algorithm 1 in every replicate. ``within`` is (sites, N)."""
    acc = across_stats(
        ppl,
        vectors,
        lambda p: select_bins(p, bin_size, n_bins).members,
        curve_bins,
        reps,
        perms,
        seed,
    )
    out = []
    for w, a in zip(within, acc, strict=True):
        ws = within_stats(ppl, w, reps, perms, seed).to_dict()
        out.append({"within": ws, "across": a.to_dict()})
    return out
