"""Algorithm 1 of the paper: equal-count perplexity bins, K of them chosen uniformly in perplexity.

Sorting segments by perplexity and cutting the order into bins of B gives bins with equal
counts but crowded at typical perplexities. To spread the selection over the whole range, K
targets are placed uniformly between the smallest and largest bin mean,

    t_k = m_min + (k - 1) / (K - 1) * (m_max - m_min),   k = 1..K,

each target takes the bin whose mean is nearest, and when several targets land on the same bin
the missing ones are filled, target by target in order of k, with the nearest bin not yet taken.
``N mod B`` segments with the highest perplexity are left out (they cannot fill a bin). Ties go
to the lower bin.

Each selected bin is then measured exactly (``bin_points``): its mean perplexity, Eq. 1 over the
bin's segment vectors (``across``) and the mean within-segment dispersion (``within``);
``correlate`` gives Pearson and Spearman of bin perplexity vs each dispersion over the bins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import RepdispError
from ..core.geometry import dispersion
from ..core.permutation import format_p
from ..core.settings import Statistics
from ..core.stats import Correlation, across_stats, correlation, within_stats

MODES = ("across", "within")
METHODS = ("pearson", "spearman")


@dataclass
class BinSelection:
    """The chosen bins, in increasing mean perplexity, as lists of segment indices."""

    bin_size: int
    targets: np.ndarray  # the K target perplexities t_k
    bin_means: np.ndarray  # mean perplexity of every equal-count bin
    chosen: np.ndarray  # indices of the selected bins among all bins, ascending
    members: list[np.ndarray] = field(repr=False)  # segment indices of each selected bin

    def __len__(self) -> int:
        return len(self.chosen)

    @property
    def means(self) -> np.ndarray:
        """Mean perplexity of each selected bin."""
        return self.bin_means[self.chosen]


def select_bins(values: np.ndarray, bin_size: int, n_bins: int) -> BinSelection:
    """Algorithm 1 over per-segment ``values`` (perplexities): see the module docstring."""
    values = np.asarray(values, dtype=np.float64)
    if bin_size < 2:
        raise RepdispError(f"--bin-size must be at least 2 segments, got {bin_size}")
    if n_bins < 2:
        raise RepdispError(f"--bins must be at least 2 to span a perplexity range, got {n_bins}")
    if not np.isfinite(values).all():
        raise RepdispError("perplexities contain NaN or inf; cannot bin them")
    n_all = len(values) // bin_size
    if n_bins > n_all:
        raise RepdispError(
            f"{len(values)} segments make only {n_all} bins of {bin_size}; ask for --bins "
            f"{n_all} or fewer, a smaller --bin-size or more --segments"
        )
    order = np.argsort(values, kind="stable")[: n_all * bin_size].reshape(n_all, bin_size)
    means = values[order].mean(axis=1)
    targets = means[0] + np.arange(n_bins) / (n_bins - 1) * (means[-1] - means[0])
    nearest = [int(np.argmin(np.abs(means - t))) for t in targets]
    taken: list[int] = []
    for b in nearest:
        if b not in taken:
            taken.append(b)
    for k, b in enumerate(nearest):  # fill: each duplicated target takes its nearest unused bin
        if nearest.index(b) != k:
            free = [
                j for j in np.argsort(np.abs(means - targets[k]), kind="stable") if j not in taken
            ]
            taken.append(int(free[0]))
    chosen = np.array(sorted(taken))
    return BinSelection(bin_size, targets, means, chosen, [order[j] for j in chosen])


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
    points: list[BinPoint], reps: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, Correlation]]:
    """Pearson and Spearman of bin mean perplexity vs each dispersion mode (``reps`` bootstrap
    resamples of the bins for the CIs at ``level``)."""
    x = [p.mean_ppl for p in points]
    return {
        mode: {
            m: correlation(x, [getattr(p, mode) for p in points], m, reps, seed, level)
            for m in METHODS
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
            p = format_p(e["p_value"])
            pp = format_p(e["p_perm"], e.get("perms", 0), "p_perm")
            fmt = "+.4f" if e["name"].startswith("slope") else "+.3f"
            lines.append(
                f"{indent}  {e['name']:<20}{e['value']:{fmt}} [{e['ci_low']:{fmt}}, "
                f"{e['ci_high']:{fmt}}]{' ' + p if p else ''}{' ' + pp if pp else ''}"
            )
        methods: dict[str, list[str]] = {}  # each CI method and the statistics it made
        for e in stat_estimates(st):
            if e.get("method"):
                methods.setdefault(e["method"], []).append(e["name"])
        for how, names in methods.items():
            of = f" of {', '.join(names)}" if len(methods) > 1 else ""
            lines.append(f"{indent}  (CI{of}: {how})")
    return lines


def segment_stats(
    ppl: np.ndarray, within: np.ndarray, vectors: list[np.ndarray], stats: Statistics
) -> list[dict[str, Any]]:
    """Segment-level statistics (``repdisp.core.stats``) of each (within, vectors) pair, with
    ``stats``' replicates, permutations, curve bins, seed and CI level; the across statistics
    re-bin with Algorithm 1 (``stats.bin_size``, ``stats.n_bins``) in every replicate.
    ``within`` is (sites, N)."""
    acc = across_stats(
        ppl,
        vectors,
        lambda p: select_bins(p, stats.bin_size, stats.n_bins).members,
        stats.curve_bins,
        stats.stats_reps,
        stats.permutations,
        stats.seed,
        level=stats.level,
    )
    out = []
    for w, a in zip(within, acc, strict=True):
        ws = within_stats(
            ppl, w, stats.stats_reps, stats.permutations, stats.seed, level=stats.level
        ).to_dict()
        out.append({"within": ws, "across": a.to_dict()})
    return out
