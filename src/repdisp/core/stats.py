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
