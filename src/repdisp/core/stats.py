"""Segment-level statistics of dispersion vs perplexity (notes below); the correlation, bootstrap
and permutation helpers every analysis shares are re-exported from their modules
(``core.correlation``, ``core.bootstrap``, ``core.permutation``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from .across import draw_values, stack_draws
from .bootstrap import bca_interval, interval_method, jackknife_groups, mean_ci, n_to_decide
from .correlation import Correlation, correlation, row_corr, row_slope
from .errors import RepdispError
from .geometry import unit_rows, weighted_dispersion
from .permutation import (
    ASYMPTOTIC_MIN_N,
    PERM_INVERSION,
    exact_p,
    floor_p,
    format_p,
    p_perm,
    permutation_interval,
)

__all__ = [
    "AcrossStats",
    "Correlation",
    "Estimate",
    "WithinStats",
    "across_stats",
    "correlation",
    "equal_bins",
    "group_dispersion",
    "mean_ci",
    "n_to_decide",
    "stats_device",
    "unit_vectors",
    "within_stats",
]
PER_DRAW = False  # True: the per-draw loop on the CPU too (the reference of core.across)
unit_vectors = unit_rows  # the one normaliser (``core.geometry.unit_rows``)
_row_corr, _row_slope, _p_perm = row_corr, row_slope, p_perm  # old private names


# ------------------------------------------------------------------ segment-level statistics
#
# The binned correlations above have K (about 10) points, so their CIs are wide whatever N is.
# The statistics below use every segment:
#
#   within   one number per segment (its token-level dispersion): Spearman rho of dispersion with
#            perplexity over all N segments, a BCa bootstrap CI over segments, scipy's p-value
#            (exact over all N! orderings for N < 10) and a permutation p-value (perplexities
#            shuffled over segments).
#   across   one vector per segment: a bin's dispersion needs the bin's vectors, so every
#            bootstrap replicate resamples SEGMENTS, re-bins them (the caller's binner, e.g.
#            Algorithm 1) and recomputes each bin's dispersion exactly from per-bin sums of unit
#            vectors (O(N·d) per replicate, never N×N); the permutation test shuffles
#            perplexities over segments, re-bins and recomputes. Beside the K-bin selection a
#            many-bins curve (all segments in equal-count bins) carries the effect size.
#   slope    dispersion per doubling of perplexity: the OLS slope of dispersion on log2
#            perplexity (per segment for within, over the many-bins curve for across).
#
# Exact dispersion of a resampled bin: the multiset kernel ``geometry.weighted_dispersion`` (pairs
# of two copies of one segment are left out; its docstring says why). Intervals: BCa
# (``core.bootstrap``) with the acceleration from a delete-a-group jackknife over segments (25
# groups; each jackknife replicate is re-binned like a bootstrap one), so an interval always
# contains its estimate. p-values: p_perm = (1 + #{|t*| >= |t|}) / (1 + P) (``core.permutation``),
# the same statistic and the same unit (segments) as the CI; the across statistics have no
# analytic p (scipy's over K bins would treat bins, not segments, as the unit): p_value is nan.


@dataclass
class Estimate:
    """A statistic with a BCa bootstrap CI over segments and p-values (nan: not given)."""

    name: str
    value: float
    ci_low: float
    ci_high: float
    p_value: float  # analytic (scipy; exact for n < 10), nan where there is none
    p_perm: float  # permutation test, nan when not run
    n: int
    method: str = ""  # how the CI and the p-values were made
    perms: int = 0  # permutations behind p_perm (its floor is 1/(perms + 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def excludes_zero(self) -> int:
        """+1 when the CI lies above 0, -1 below 0, 0 when it contains 0 (or is undefined)."""
        if self.ci_low > 0:
            return 1
        if self.ci_high < 0:
            return -1
        return 0

    def __str__(self) -> str:
        p = format_p(self.p_value)
        pp = format_p(self.p_perm, self.perms, "p_perm")
        fmt = "+.3f" if abs(self.value) >= 1e-3 or self.value == 0 else "+.2e"
        return (
            f"{self.name} {self.value:{fmt}} [{self.ci_low:{fmt}}, {self.ci_high:{fmt}}]"
            f"{' ' + p if p else ''}{' ' + pp if pp else ''} n={self.n}"
        )


def _method(reps: int, perms: int, unit: str, groups: int, p: str = "") -> str:
    """The ``method`` text of a segment-level estimate."""
    tail = f"; p_perm: {perms} permutations of perplexity over segments" if perms else ""
    return interval_method(reps, unit, groups) + (f"; p: {p}" if p else "") + tail


def _rows_per_chunk(n: int) -> int:
    return max(1, (1 << 22) // max(1, n))  # about 4M float64 values (32 MiB) per chunk


def _check_pairs(ppl: Any, values: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(ppl, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape[:1] or len(x) < 3:
        raise RepdispError(
            f"need at least 3 segments with one perplexity each, got {x.shape} and {y.shape}"
        )
    if not (np.isfinite(x).all() and (x > 0).all()):
        raise RepdispError("perplexities must be finite and positive")
    if not np.isfinite(y).all():
        raise RepdispError("dispersions contain NaN or inf")
    return x, y


@dataclass
class WithinStats:
    """Segment-level statistics of within-segment dispersion vs perplexity."""

    spearman: Estimate  # rho over all N segments
    slope: Estimate  # dispersion per doubling of perplexity (OLS on log2 perplexity)
    reps: int
    perms: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def within_stats(
    ppl: Any,
    dispersion: Any,
    reps: int = 1000,
    perms: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> WithinStats:
    """Spearman rho and the per-doubling slope of per-segment dispersion on perplexity, each with
    a bootstrap CI over segments, scipy's p-value and a permutation p-value."""
    x, y = _check_pairs(ppl, dispersion)
    n = len(x)
    lx = np.log2(x)
    rho = float(sps.spearmanr(x, y)[0])
    slope = float(sps.linregress(lx, y).slope)
    if n < ASYMPTOTIC_MIN_N:
        p_rho = exact_p(row_corr, sps.rankdata(x), sps.rankdata(y))
        p_slope, p_how = exact_p(row_slope, lx, y), f"exact (all {n}! orderings)"
    else:
        p_rho, p_slope = floor_p(float(sps.spearmanr(x, y)[1])), floor_p(sps.linregress(lx, y).pvalue)
        p_how = "scipy asymptotic"
    rng = np.random.default_rng(seed)
    boot_rho, boot_slope = [], []
    step = _rows_per_chunk(n)
    for start in range(0, reps, step):
        idx = rng.integers(0, n, (min(step, reps - start), n))
        boot_rho.append(row_corr(sps.rankdata(x[idx], axis=1), sps.rankdata(y[idx], axis=1)))
        boot_slope.append(row_slope(lx[idx], y[idx]))
    rx, ry = sps.rankdata(x), sps.rankdata(y)
    null_rho, null_slope = [], []
    for start in range(0, perms, step):
        k = min(step, perms - start)
        order = rng.permuted(np.tile(np.arange(n), (k, 1)), axis=1)
        null_rho.append(row_corr(rx[order], np.broadcast_to(ry, (k, n))))
        null_slope.append(row_slope(lx[order], np.broadcast_to(y, (k, n))))
    jk = jackknife_groups(n)
    jack_rho = [float(sps.spearmanr(x[k], y[k])[0]) for k in jk]
    jack_slope = [float(row_slope(lx[k], y[k])) for k in jk]
    cat = lambda parts: np.concatenate(parts) if parts else np.empty(0)  # noqa: E731
    how = _method(reps, perms, "segments", len(jk) if len(jk) < n else 0, p_how)
    est = [
        Estimate(
            name,
            value,
            *bca_interval(value, cat(boots), jack, level),
            p,
            p_perm(value, cat(null)) if perms else float("nan"),
            n,
            how,
            perms,
        )
        for name, value, boots, jack, p, null in (
            ("spearman", rho, boot_rho, jack_rho, p_rho, null_rho),
            ("slope_per_doubling", slope, boot_slope, jack_slope, p_slope, null_slope),
        )
    ]
    return WithinStats(*est, reps, perms, seed)


def group_dispersion(units: Any, groups: list[np.ndarray]) -> np.ndarray:
    """Exact Eq. 1 dispersion of each group of rows of ``units`` (unit vectors); a group may
    repeat a row (a bootstrap copy): pairs of copies of one row are left out (module notes).
    ``units`` is a float64 numpy array (one sparse groups x N product on the CPU: O(N·d), no
    N×N matrix) or a float64 torch tensor on a GPU (a dense groups x N weight matrix, one
    deterministic GEMM)."""
    rows, members = _flatten(groups)
    return _weights_dispersion(units, rows, members.astype(np.int64), len(groups))


def _flatten(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(group of each member, the members) of a list of index arrays, concatenated."""
    rows = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    return rows, np.concatenate(groups)


def _weights_dispersion(units: Any, rows: Any, cols: Any, n_groups: int) -> np.ndarray:
    """``group_dispersion`` from (group, row) pairs; ``rows``/``cols`` live where ``units`` does.
    The (groups x N) count matrix is scipy sparse for numpy ``units``, a dense torch tensor for
    torch ones; either way the one multiset kernel ``geometry.weighted_dispersion`` does the rest."""
    if isinstance(units, np.ndarray):
        from scipy import sparse

        w = sparse.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(n_groups, len(units)))
        w.sum_duplicates()
    else:  # torch on a GPU: counts are small integers, so accumulate=True is exact in any order
        import torch

        w = torch.zeros(n_groups, units.shape[0], dtype=units.dtype, device=units.device)
        w.index_put_((rows, cols), torch.ones_like(cols, dtype=units.dtype), accumulate=True)
    return weighted_dispersion(units, w)


def equal_bins(values: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """All segments sorted by value and cut into ``n_bins`` bins of (almost) equal count."""
    return np.array_split(np.argsort(values, kind="stable"), n_bins)


@dataclass
class AcrossStats:
    """Across-segment dispersion vs perplexity, with segments (not bins) as the resampled unit.

    ``pearson``/``spearman``: over the K bins the binner selects (the paper's numbers); CI from
    re-binning bootstrap replicates of the segments, p_perm from re-binning shuffled perplexities.
    ``curve_spearman``/``slope``: over ``curve`` (all segments in equal-count bins)."""

    pearson: Estimate
    spearman: Estimate
    curve_spearman: Estimate
    slope: Estimate  # dispersion per doubling of bin mean perplexity, over the curve
    curve_bins: int
    curve: list[dict[str, float]]  # mean_ppl, dispersion, n per curve bin
    reps: int
    perms: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Plan:
    """One draw's binning, shared by every site: group g holds ``cols[rows == g]`` (rows of the
    units); the first ``k`` groups are the binner's bins, the rest the equal-count curve."""

    rows: Any
    cols: Any
    n_groups: int
    k: int
    means: np.ndarray  # mean perplexity of each group


def _plan(ppl: np.ndarray, ids: np.ndarray, binner: Any, curve_bins: int) -> _Plan:
    """``ppl[i]`` is the perplexity of the i-th drawn segment, ``ids[i]`` the row it reads."""
    sel = [np.asarray(m) for m in binner(ppl)]
    groups = sel + equal_bins(ppl, curve_bins)
    sizes = np.array([len(g) for g in groups])
    rows, members = _flatten(groups)
    cols = ids[members].astype(np.int64)
    if sizes.all():  # group means from one pass of sums
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        means = np.add.reduceat(ppl[members], starts) / sizes
    else:  # an empty group (a custom binner) has no mean
        means = np.array([ppl[g].mean() if len(g) else np.nan for g in groups])
    return _Plan(rows, cols, len(groups), len(sel), means)


def _plan_stats(d: np.ndarray, plan: _Plan) -> np.ndarray:
    """pearson, spearman over the binner's bins; spearman, slope over the curve."""
    out = np.full(4, np.nan)
    k = plan.k
    dk, dc = d[:k], d[k:]
    ok_k, ok_c = np.isfinite(dk), np.isfinite(dc)  # a bin of copies of one segment: no pairs
    x_k, y_k = plan.means[:k][ok_k], dk[ok_k]
    x_c, y_c = np.log2(plan.means[k:])[ok_c], dc[ok_c]
    if len(x_k) > 2:
        out[0] = row_corr(x_k, y_k)
        out[1] = row_corr(sps.rankdata(x_k), sps.rankdata(y_k))
    if len(x_c) > 2:
        out[2] = row_corr(sps.rankdata(x_c), sps.rankdata(y_c))
        out[3] = row_slope(x_c, y_c)
    return out


def _across_interval(
    j: int, est: float, boots: np.ndarray, jack: np.ndarray, null: np.ndarray, level: float
) -> tuple[float, float]:
    """The K-bin Pearson/Spearman r (j < 2) with permutations: the permutation-inversion
    interval (module notes); every other statistic, and those without permutations: BCa."""
    if j < 2 and len(null):
        return permutation_interval(est, null, level)
    return bca_interval(est, boots, jack, level)


def stats_device(device: Any = "auto") -> Any:
    """Where the across-segment replicates run: a CUDA device (float64 GEMMs) when asked for or,
    with ``auto``, when torch sees one; None for the CPU (scipy sparse products)."""
    if device in (None, "cpu"):
        return None
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else None
    dev = torch.device(device)
    return dev if dev.type == "cuda" else None


def across_stats(
    ppl: Any,
    vectors: Any | list[Any],
    binner: Any,
    curve_bins: int = 50,
    reps: int = 1000,
    perms: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    device: Any = "auto",
) -> list[AcrossStats]:
    """Segment-bootstrap BCa CIs and permutation p-values of the binned across-segment statistics.

    ``vectors``: one (N, d) matrix or a list of them (several sites share the binning of every
    replicate); ``binner(ppl) -> list of index arrays`` (e.g. Algorithm 1's members). Returns one
    ``AcrossStats`` per matrix.

    Cost: every draw (observed, ``reps`` bootstraps, ``perms`` shuffles, 25 jackknife
    replicates) is binned once for all
    sites; then each site in turn is normalised in float64 and run through every draw, so one
    site's units are in memory at a time. On the CPU a draw costs one sparse O(N·d) product per
    site; with ``device`` a CUDA device (``auto``: one when torch sees it) each is one float64
    GEMM on the GPU - the paper's scale (N = 100,000, d = 4,096, 33 sites) needs that."""
    mats = vectors if isinstance(vectors, list) else [vectors]
    x = np.asarray(ppl, dtype=np.float64)
    for m in mats:
        _check_pairs(x, np.asarray(m))
    n = len(x)
    curve_bins = max(3, min(curve_bins, n // 5))  # at least 5 segments per curve bin
    ids = np.arange(n)
    rng = np.random.default_rng(seed)
    plans: list[_Plan | None] = [_plan(x, ids, binner, curve_bins)]
    for _ in range(reps):
        i = rng.integers(0, n, n)
        try:
            plans.append(_plan(x[i], i, binner, curve_bins))
        except RepdispError:  # a replicate the binner cannot bin (e.g. ties): left out
            plans.append(None)
    for _ in range(perms):
        plans.append(_plan(x[rng.permutation(n)], ids, binner, curve_bins))
    jk = jackknife_groups(n)
    for keep in jk:  # delete-a-group jackknife for the BCa acceleration, re-binned likewise
        try:
            plans.append(_plan(x[keep], keep, binner, curve_bins))
        except RepdispError:
            plans.append(None)
    dev = stats_device(device)
    if dev is not None:
        import torch

        for p in plans:
            if p is not None:
                p.rows = torch.from_numpy(p.rows).to(dev)
                p.cols = torch.from_numpy(p.cols).to(dev)
    sel = [np.asarray(m) for m in binner(x)]
    cur = equal_bins(x, curve_bins)
    curve_means = [float(x[m].mean()) for m in cur]
    names = ("pearson", "spearman", "curve_spearman", "slope_per_doubling")
    how = _method(reps, perms, "segments, re-binned", len(jk) if len(jk) < n else 0)
    how_k = f"{PERM_INVERSION}, {perms} permutations of perplexity over segments, re-binned"
    how_k += "; p_perm: the same permutations"
    results = []
    stacked = stack_draws(plans, n) if dev is None and not PER_DRAW else None
    for m in mats:
        u = unit_vectors(m)
        if stacked is not None:  # one sparse product per site over every draw (core.across)
            d_all = stacked.dispersions(u)
            vals = draw_values(d_all, plans, stacked.offsets, _plan_stats)
            d_obs = d_all[: stacked.offsets[1]]
        else:  # per draw: the GPU (one GEMM each) and the reference path (PER_DRAW)
            if dev is not None:
                u = torch.from_numpy(u).to(dev)
            vals = np.full((len(plans), 4), np.nan)
            d_obs = None
            for j, p in enumerate(plans):
                if p is not None:
                    d = _weights_dispersion(u, p.rows, p.cols, p.n_groups)
                    vals[j] = _plan_stats(d, p)
                    d_obs = d if j == 0 else d_obs
        del u
        obs, boots = vals[0], vals[1 : 1 + reps]
        null, jack = vals[1 + reps : 1 + reps + perms], vals[1 + reps + perms :]
        d = d_obs[len(sel) :]
        est = [
            Estimate(
                names[j],
                float(obs[j]),
                *_across_interval(j, float(obs[j]), boots[:, j], jack[:, j], null[:, j], level),
                float("nan"),  # no analytic p over segments (module notes)
                p_perm(obs[j], null[:, j]) if perms else float("nan"),
                n,
                how_k if j < 2 and perms else how,
                perms,
            )
            for j in range(4)
        ]
        curve = [
            {"mean_ppl": mp, "dispersion": float(dd), "n": len(g)}
            for mp, dd, g in zip(curve_means, d, cur, strict=True)
        ]
        results.append(AcrossStats(*est, curve_bins, curve, reps, perms, seed))
    return results
