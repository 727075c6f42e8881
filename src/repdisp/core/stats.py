"""Correlations with bootstrap confidence intervals, shared by every analysis."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from .errors import RepdispError


@dataclass
class Correlation:
    method: str  # pearson | spearman | kendall
    r: float
    p_value: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.method} r={self.r:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}] "
            f"p={self.p_value:.3g} n={self.n}"
        )


_METHODS = {"pearson": sps.pearsonr, "spearman": sps.spearmanr, "kendall": sps.kendalltau}


def correlation(
    x: Any, y: Any, method: str = "pearson", reps: int = 2000, seed: int = 0, level: float = 0.95
) -> Correlation:
    """Correlation of x and y with scipy's p-value and a percentile bootstrap CI over pairs."""
    if method not in _METHODS:
        raise RepdispError(f"unknown correlation {method!r}; choose {', '.join(_METHODS)}")
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y) or len(x) < 3:
        raise RepdispError(f"correlation needs at least 3 paired values, got {len(x)} and {len(y)}")
    fn = _METHODS[method]
    res = fn(x, y)
    r, p = float(res[0]), float(res[1])
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(reps):
        i = rng.integers(0, len(x), len(x))
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            boots.append(float(fn(x[i], y[i])[0]))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha]) if boots else (np.nan, np.nan)
    return Correlation(method, r, p, float(lo), float(hi), len(x))


def mean_ci(values: np.ndarray, reps: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of a mean."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (reps, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def n_to_decide(n: int, value: float, ci_low: float, ci_high: float) -> float:
    """Segments needed for a 95% CI like this one to exclude 0, if the estimate stayed put.

    A CI over ``n`` resampled segments narrows as 1/sqrt(n). Its reach toward 0, h (estimate
    to the CI end on 0's side; percentile CIs need not be symmetric), becomes h·sqrt(n/m) at m
    segments and stops covering 0 once that is below |value|: m = n·(h/|value|)². A planning
    figure, not a promise: the estimate moves with N too. ``inf`` when the estimate is 0 or the
    CI is undefined; ``n`` or less when the CI already excludes 0.

    Examples
    --------
    >>> n_to_decide(1000, -0.01, -0.03, 0.01)
    4000.0
    """
    if not (np.isfinite(ci_low) and np.isfinite(ci_high) and np.isfinite(value)) or value == 0:
        return float("inf")
    reach = value - ci_low if value > 0 else ci_high - value
    return float(n * (reach / abs(value)) ** 2)


# ------------------------------------------------------------------ segment-level statistics
#
# The binned correlations above have K (about 10) points, so their CIs are wide whatever N is.
# The statistics below use every segment:
#
#   within   one number per segment (its token-level dispersion): Spearman rho of dispersion with
#            perplexity over all N segments, a percentile bootstrap CI over segments, scipy's
#            p-value and a permutation p-value (perplexities shuffled over segments).
#   across   one vector per segment: a bin's dispersion needs the bin's vectors, so every
#            bootstrap replicate resamples SEGMENTS, re-bins them (the caller's binner, e.g.
#            Algorithm 1) and recomputes each bin's dispersion exactly from per-bin sums of unit
#            vectors (O(N·d) per replicate, never N×N); the permutation test shuffles
#            perplexities over segments, re-bins and recomputes. Beside the K-bin selection a
#            many-bins curve (all segments in equal-count bins) carries the effect size.
#   slope    dispersion per doubling of perplexity: the OLS slope of dispersion on log2
#            perplexity (per segment for within, over the many-bins curve for across).
#
# Exact dispersion of a resampled bin. A bootstrap bin holds copies: original segment k appears
# c_k times. Pairs of two copies of the same segment (distance 0 by construction, not data) are
# left out, so with S = Σ_k c_k u_k and n = Σ_k c_k
#
#   D = 1 - (||S||² - Σ_k c_k²) / (n² - Σ_k c_k²),
#
# which is Eq. 1 when every c_k = 1. Two-sided p-values: p_perm = (1 + #{|t*| >= |t|}) / (1 + P).


@dataclass
class Estimate:
    """A statistic with a percentile bootstrap CI over segments and p-values (nan: not given)."""

    name: str
    value: float
    ci_low: float
    ci_high: float
    p_value: float  # analytic (scipy), nan where there is none
    p_perm: float  # permutation test, nan when not run
    n: int

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
        p = f" p={self.p_value:.3g}" if np.isfinite(self.p_value) else ""
        pp = f" p_perm={self.p_perm:.3g}" if np.isfinite(self.p_perm) else ""
        fmt = "+.3f" if abs(self.value) >= 1e-3 or self.value == 0 else "+.2e"
        return (
            f"{self.name} {self.value:{fmt}} [{self.ci_low:{fmt}}, {self.ci_high:{fmt}}]"
            f"{p}{pp} n={self.n}"
        )


def _percentile(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return float(lo), float(hi)


def _p_perm(observed: float, null: np.ndarray) -> float:
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or len(null) == 0:
        return float("nan")
    return float((1 + np.sum(np.abs(null) >= abs(observed) - 1e-12)) / (1 + len(null)))


def _row_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row of a with the same row of b (rows with no spread give nan)."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1), np.nan)


def _row_slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OLS slope of y on x, row by row (nan where x has no spread)."""
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    sxx = (x * x).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sxx > 0, (x * y).sum(-1) / np.where(sxx > 0, sxx, 1), np.nan)


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
    res = sps.spearmanr(x, y)
    rho, p_rho = float(res[0]), float(res[1])
    lin = sps.linregress(lx, y)
    slope, p_slope = float(lin.slope), float(lin.pvalue)
    rng = np.random.default_rng(seed)
    boot_rho, boot_slope = [], []
    step = _rows_per_chunk(n)
    for start in range(0, reps, step):
        idx = rng.integers(0, n, (min(step, reps - start), n))
        boot_rho.append(_row_corr(sps.rankdata(x[idx], axis=1), sps.rankdata(y[idx], axis=1)))
        boot_slope.append(_row_slope(lx[idx], y[idx]))
    rx, ry = sps.rankdata(x), sps.rankdata(y)
    null_rho, null_slope = [], []
    for start in range(0, perms, step):
        k = min(step, perms - start)
        order = rng.permuted(np.tile(np.arange(n), (k, 1)), axis=1)
        null_rho.append(_row_corr(rx[order], np.broadcast_to(ry, (k, n))))
        null_slope.append(_row_slope(lx[order], np.broadcast_to(y, (k, n))))
    cat = lambda parts: np.concatenate(parts) if parts else np.empty(0)  # noqa: E731
    return WithinStats(
        Estimate(
            "spearman",
            rho,
            *_percentile(cat(boot_rho), level),
            p_rho,
            _p_perm(rho, cat(null_rho)) if perms else float("nan"),
            n,
        ),
        Estimate(
            "slope_per_doubling",
            slope,
            *_percentile(cat(boot_slope), level),
            p_slope,
            _p_perm(slope, cat(null_slope)) if perms else float("nan"),
            n,
        ),
        reps,
        perms,
        seed,
    )


def unit_vectors(vectors: Any) -> np.ndarray:
    """Rows scaled to unit length, float64 (zero or non-finite rows raise)."""
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2:
        raise RepdispError(f"expected vectors of shape (N, d), got {v.shape}")
    norms = np.linalg.norm(v, axis=1)
    if not (np.isfinite(norms).all() and (norms > 0).all()):
        raise RepdispError("vectors contain zero rows, NaN or inf; cosine distance is undefined")
    return v / norms[:, None]


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
    """``group_dispersion`` from (group, row) pairs; ``rows``/``cols`` live where ``units`` does."""
    if isinstance(units, np.ndarray):
        from scipy import sparse

        w = sparse.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(n_groups, len(units)))
        w.sum_duplicates()
        sums = np.asarray(w @ units)
        norm2 = (sums * sums).sum(1)
        n = np.asarray(w.sum(axis=1)).ravel()
        sq = np.asarray(w.multiply(w).sum(axis=1)).ravel()
    else:  # torch on a GPU: counts are small integers, so accumulate=True is exact in any order
        import torch

        w = torch.zeros(n_groups, units.shape[0], dtype=units.dtype, device=units.device)
        w.index_put_((rows, cols), torch.ones_like(cols, dtype=units.dtype), accumulate=True)
        sums = w @ units
        norm2 = (sums * sums).sum(1).cpu().numpy()
        n, sq = w.sum(1).cpu().numpy(), (w * w).sum(1).cpu().numpy()
    den = n * n - sq
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 1 - (norm2 - sq) / np.where(den > 0, den, 1), np.nan)


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
        out[0] = _row_corr(x_k, y_k)
        out[1] = _row_corr(sps.rankdata(x_k), sps.rankdata(y_k))
    if len(x_c) > 2:
        out[2] = _row_corr(sps.rankdata(x_c), sps.rankdata(y_c))
        out[3] = _row_slope(x_c, y_c)
    return out


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
    """Segment-bootstrap CIs and permutation p-values of the binned across-segment statistics.

    ``vectors``: one (N, d) matrix or a list of them (several sites share the binning of every
    replicate); ``binner(ppl) -> list of index arrays`` (e.g. Algorithm 1's members). Returns one
    ``AcrossStats`` per matrix.

    Cost: every draw (observed, ``reps`` bootstraps, ``perms`` shuffles) is binned once for all
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
    dev = stats_device(device)
    if dev is not None:
        import torch

        for p in plans:
            if p is not None:
                p.rows = torch.from_numpy(p.rows).to(dev)
                p.cols = torch.from_numpy(p.cols).to(dev)
    sel = [np.asarray(m) for m in binner(x)]
    cur = equal_bins(x, curve_bins)
    mk = [x[m].mean() for m in sel]
    curve_means = [float(x[m].mean()) for m in cur]
    names = ("pearson", "spearman", "curve_spearman", "slope_per_doubling")
    results = []
    for m in mats:
        u = unit_vectors(m)
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
        obs, boots, null = vals[0], vals[1 : 1 + reps], vals[1 + reps :]
        dk, d = d_obs[: len(sel)], d_obs[len(sel) :]
        p_scipy = [
            float(sps.pearsonr(mk, dk)[1]),
            float(sps.spearmanr(mk, dk)[1]),
            float(sps.spearmanr(curve_means, d)[1]),
            float(sps.linregress(np.log2(curve_means), d).pvalue),
        ]
        est = [
            Estimate(
                names[j],
                float(obs[j]),
                *_percentile(boots[:, j], level),
                p_scipy[j],
                _p_perm(obs[j], null[:, j]) if perms else float("nan"),
                n,
            )
            for j in range(4)
        ]
        curve = [
            {"mean_ppl": mp, "dispersion": float(dd), "n": len(g)}
            for mp, dd, g in zip(curve_means, d, cur, strict=True)
        ]
        results.append(AcrossStats(*est, curve_bins, curve, reps, perms, seed))
    return results
