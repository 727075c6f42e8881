"""Correlation of paired values (e.g. K bin means) with a BCa CI and an exact or scipy p.

One resampling unit for both: the pairs. The CI is BCa (``core.bootstrap``) over bootstrap
resamples of the pairs with delete-one jackknife acceleration; the p-value is exact for
n < 10 (every ordering of y against x, ``core.permutation.exact_p``), scipy's otherwise
(t-distribution for Pearson/Spearman, scipy's choice for Kendall), floored above 0.
Row-wise Pearson r and OLS slope helpers (``row_corr``, ``row_slope``) are shared with the
segment-level statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from .bootstrap import BCA, bca_interval, jackknife_groups
from .errors import RepdispError
from .permutation import ASYMPTOTIC_MIN_N, exact_p, floor_p, format_p


@dataclass
class Correlation:
    method: str  # pearson | spearman | kendall
    r: float
    p_value: float
    ci_low: float
    ci_high: float
    n: int
    ci_method: str = ""  # how the CI was made, e.g. "BCa 2000 bootstraps over pairs, ..."
    p_method: str = ""  # "exact (all n! orderings)" or "scipy asymptotic"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.method} r={self.r:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}] "
            f"{format_p(self.p_value) or 'p=nan'} n={self.n}"
        )


def row_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row of a with the same row of b (rows with no spread give nan)."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1), np.nan)


def row_slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OLS slope of y on x, row by row (nan where x has no spread)."""
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    sxx = (x * x).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sxx > 0, (x * y).sum(-1) / np.where(sxx > 0, sxx, 1), np.nan)


def row_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rho row by row (average ranks for ties)."""
    return row_corr(sps.rankdata(a, axis=-1), sps.rankdata(b, axis=-1))


def row_kendall(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall tau-b row by row (scipy's ``kendalltau`` default), O(n²) per row."""
    i, j = np.triu_indices(a.shape[-1], 1)
    sa, sb = np.sign(a[..., i] - a[..., j]), np.sign(b[..., i] - b[..., j])
    den = np.sqrt((sa * sa).sum(-1) * (sb * sb).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (sa * sb).sum(-1) / np.where(den > 0, den, 1), np.nan)


_METHODS = {"pearson": sps.pearsonr, "spearman": sps.spearmanr, "kendall": sps.kendalltau}
_ROWS = {"pearson": row_corr, "spearman": row_spearman, "kendall": row_kendall}


def correlation(
    x: Any, y: Any, method: str = "pearson", reps: int = 2000, seed: int = 0, level: float = 0.95
) -> Correlation:
    """Correlation of x and y; BCa bootstrap CI over pairs and a p-value (module notes)."""
    if method not in _METHODS:
        raise RepdispError(f"unknown correlation {method!r}; choose {', '.join(_METHODS)}")
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y) or len(x) < 3:
        raise RepdispError(f"correlation needs at least 3 paired values, got {len(x)} and {len(y)}")
    n, rows = len(x), _ROWS[method]
    res = _METHODS[method](x, y)
    r = float(res[0])
    if n < ASYMPTOTIC_MIN_N:
        p, p_method = exact_p(rows, x, y), f"exact (all {n}! orderings)"
    else:
        p, p_method = floor_p(float(res[1])), "scipy asymptotic"
    rng = np.random.default_rng(seed)
    boots = []
    step = max(1, (1 << 20) // (n * n))
    for start in range(0, reps, step):
        i = rng.integers(0, n, (min(step, reps - start), n))
        if method == "kendall" and n > 200:  # O(n²) rows: scipy's O(n log n), one by one
            boots.append(np.array([_METHODS[method](x[k], y[k])[0] for k in i]))
        else:
            boots.append(rows(x[i], y[i]))
    jk = jackknife_groups(n, 200)
    jack = [float(rows(x[k][None], y[k][None])[0]) if n <= 200 else _METHODS[method](x[k], y[k])[0] for k in jk]
    lo, hi = bca_interval(r, np.concatenate(boots) if boots else [], jack, level)
    how = f"{BCA} {reps} bootstraps over pairs, delete-{'one' if len(jk) == n else 'group'} jackknife"
    return Correlation(method, r, p, lo, hi, n, how, p_method)
