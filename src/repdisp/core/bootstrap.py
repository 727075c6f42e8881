"""Bootstrap resampling and the one confidence interval every resampled statistic reports.

Resamples. ``bootstrap_weights`` draws resamples of N items as count rows; with the multiset
kernel ``geometry.weighted_dispersion`` (copies of one item are never paired with each other)
each row gives one replicate's dispersion.

Interval: BCa (bias-corrected and accelerated percentile, Efron 1987). With θ̂ the estimate,
θ*_1..θ*_B the replicates and Φ the normal CDF,

    z0 = Φ⁻¹( (#{θ* < θ̂} + #{θ* = θ̂}/2) / B )                   (median bias of the replicates)
    a  = Σ (θ̄ - θ_(g))³ / (6 (Σ (θ̄ - θ_(g))²)^{3/2})               (jackknife acceleration)
    CI = [ q(α1), q(α2) ],  α = Φ( z0 + (z0 + z_α) / (1 - a (z0 + z_α)) )

with q the quantile of the replicates and θ_(g) the statistic with jackknife group g deleted
(one item per group when N is small: the ordinary jackknife; ``jackknife_groups``). A plain
percentile interval of re-binned replicates can miss its own estimate (re-binning a resample
with copies moves the statistic); BCa moves the interval by the replicates' median bias, and
the ends are finally widened to the estimate, so ``lo <= θ̂ <= hi`` always (this only acts
when |z0| exceeds z_{1-α/2}, i.e. the estimate lies outside the replicates' central 95%).
Replicates that are nan (a resample the statistic is undefined on) are left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from .errors import RepdispError
from .geometry import as_matrix, unit_rows, weighted_dispersion

BCA = "BCa"
JACKKNIFE_GROUPS = 25  # deleted groups in the jackknife of an expensive (re-binned) statistic


def bootstrap_weights(n: int, reps: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``reps`` bootstrap resamples of ``n`` items as count rows (b, n), in blocks of at most
    2·10⁶ counts; one seeded stream, so the rows do not depend on the block size. With
    ``weighted_dispersion`` each row gives one resample's dispersion; paired statistics use the
    same rows for both sides."""
    rng = np.random.default_rng(seed)
    block = max(1, min(reps, 2_000_000 // n))
    for start in range(0, reps, block):
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=min(block, reps - start))


def jackknife_groups(n: int, groups: int = JACKKNIFE_GROUPS) -> list[np.ndarray]:
    """Index arrays of the items kept in each delete-a-group jackknife replicate: item i is in
    group i mod G, G = min(n, groups). G = n is the ordinary delete-one jackknife; a grouped
    jackknife estimates the same acceleration (third over second moment of the group
    influences; both scale with the group size) at G replicates' cost."""
    g = min(n, groups)
    label = np.arange(n) % g
    return [np.flatnonzero(label != k) for k in range(g)]


def acceleration(jack: Any) -> float:
    """BCa acceleration a from jackknife values (0 when they have no spread or none is finite)."""
    j = np.asarray(jack, dtype=np.float64)
    j = j[np.isfinite(j)]
    if len(j) < 3:
        return 0.0
    dev = j.mean() - j
    ss = float((dev * dev).sum())
    return float((dev**3).sum() / (6 * ss**1.5)) if ss > 0 else 0.0


def bca_interval(
    estimate: float, replicates: Any, jack: Any = (), level: float = 0.95
) -> tuple[float, float]:
    """BCa interval (module notes) of ``estimate`` from bootstrap ``replicates`` and jackknife
    values ``jack`` (empty: acceleration 0, the bias-corrected percentile interval); always
    contains ``estimate``; (nan, nan) without finite replicates or estimate."""
    b = np.asarray(replicates, dtype=np.float64)
    b = b[np.isfinite(b)]
    if len(b) == 0 or not np.isfinite(estimate):
        return float("nan"), float("nan")
    frac = (np.sum(b < estimate) + 0.5 * np.sum(b == estimate)) / len(b)
    z0 = ndtri(np.clip(frac, 0.5 / len(b), 1 - 0.5 / len(b)))
    za = ndtri(np.array([(1 - level) / 2, (1 + level) / 2]))
    a = acceleration(jack)
    den = np.maximum(1 - a * (z0 + za), 1e-6)  # a (z0 + z) >= 1: the far end of the replicates
    q = ndtr(z0 + (z0 + za) / den)
    lo, hi = np.quantile(b, np.clip(q, 0, 1))
    return float(min(lo, estimate)), float(max(hi, estimate))


def interval_method(reps: int, unit: str, jack_groups: int) -> str:
    """The ``method`` text of a BCa interval: what was resampled and how a was estimated."""
    jk = "delete-one" if jack_groups <= 0 else f"{jack_groups}-group"
    return f"{BCA} {reps} bootstraps over {unit}, {jk} jackknife acceleration"


def bootstrap_ci(
    x: Any, reps: int = 1000, seed: int = 0, level: float = 0.95, zero: str = "error"
) -> tuple[float, float]:
    """BCa bootstrap CI of the dispersion, resampling vectors with replacement.

    Replicates: the multiset kernel ``weighted_dispersion`` of each ``bootstrap_weights`` row
    (copies of one vector are not paired); acceleration: the exact delete-one jackknife,
    D_(i) = 1 - (||S - u_i||² - (N-1)) / ((N-1)(N-2)), O(N·d) for all i together.

    Parameters
    ----------
    x : array_like of shape (N, d)
    reps : int
        Number of resamples.
    seed : int
        Seed of the resampling (``bootstrap_weights``).
    level : float
        Coverage of the interval.
    zero : {"error", "drop"}

    Returns
    -------
    (float, float)
        The BCa interval (``core.bootstrap`` notes); it contains ``dispersion(x)``.

    Examples
    --------
    >>> import numpy as np
    >>> from repdisp import bootstrap_ci, dispersion
    >>> X = np.random.default_rng(0).normal(size=(50, 8))
    >>> lo, hi = bootstrap_ci(X, reps=200, seed=0)
    >>> bool(lo < dispersion(X) < hi)
    True
    """
    units = unit_rows(as_matrix(x), zero)
    n = len(units)
    if n < 2:
        raise RepdispError(f"dispersion needs at least 2 vectors, got {n}")
    values = np.concatenate([weighted_dispersion(units, w) for w in bootstrap_weights(n, reps, seed)])
    s = units.sum(axis=0)
    est = 1.0 - (float(s @ s) - n) / (n * (n - 1))
    jack: Any = ()
    if n > 2:
        loo = s[None, :] - units
        jack = 1.0 - (np.einsum("ij,ij->i", loo, loo) - (n - 1)) / ((n - 1) * (n - 2))
    return bca_interval(est, values, jack, level)


def mean_ci(values: np.ndarray, reps: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of a mean (a mean's replicates centre on it: no correction)."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (reps, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def n_to_decide(n: int, value: float, ci_low: float, ci_high: float) -> float:
    """Segments needed for a 95% CI like this one to exclude 0, if the estimate stayed put.

    A CI over ``n`` resampled segments narrows as 1/sqrt(n). Its reach toward 0, h (estimate
    to the CI end on 0's side; bootstrap CIs need not be symmetric), becomes h·sqrt(n/m) at m
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
