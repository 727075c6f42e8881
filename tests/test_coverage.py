"""Coverage of the bootstrap intervals on synthetic data with a planted population value.

Population: u = cos(φ) e1 + sin(φ) v, φ ~ N(0, s²), v uniform on the unit sphere orthogonal to e1.
Then E[u] = exp(-s²/2) e1, so the population dispersion E[1 - u·u'] of two independent draws is
exactly 1 - exp(-s²). For ppl-vs-dispersion, log2 perplexity z is uniform on [2, 8] and
s = s(z) falls with z: the population curve (equal-count bins of z, their dispersion against
log2 of their mean perplexity) is computed by quadrature, and its OLS slope is the planted value
the across-segment slope's interval must cover.

Tolerance of the 400-seed checks: 93%..97% (the band the issue states; the binomial sd of the
coverage of a correct 95% interval over 400 seeds is 1.1%). The across-segment slope costs ~25
re-binnings per seed and replicate, so its 400-seed check is marked ``long`` (deselected by
default: ``pytest -m long`` runs it); the cheap one (30
seeds) asks for the 99.9% binomial lower bound of a correct interval (23 of 30), which an
interval covering 60% of the time passes with probability 0.04.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from repdisp.analyses.binning import select_bins
from repdisp.core.bootstrap import bootstrap_ci, bootstrap_weights
from repdisp.core.geometry import unit_rows, weighted_dispersion
from repdisp.core.stats import across_stats


def planted(rng: np.random.Generator, s: np.ndarray, d: int) -> np.ndarray:
    """One vector per entry of ``s`` from the population above (population D = 1 - exp(-s²))."""
    phi = rng.normal(0, 1, len(s)) * s
    v = rng.normal(size=(len(s), d - 1))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.column_stack([np.cos(phi), np.sin(phi)[:, None] * v])


def _measure_coverage(seeds: int, n: int, d: int, s: float, reps: int) -> float:
    truth = 1 - np.exp(-s * s)
    hits = 0
    for seed in range(seeds):
        x = planted(np.random.default_rng(seed), np.full(n, s), d)
        lo, hi = bootstrap_ci(x, reps=reps, seed=seed + 10_000)
        hits += lo <= truth <= hi
    return hits / seeds


def test_measure_interval_covers_planted_dispersion_400_seeds():
    assert 0.93 <= _measure_coverage(400, 100, 8, 0.8, 1000) <= 0.97  # measured: 0.945


def test_copies_left_out_cover_better_than_copies_counted():
    """Why the kernel leaves pairs of copies out: at N = 20, percentile intervals of replicates
    that count copies as pairs at distance 0 centre D/N too low and cover the planted D less
    often than replicates that leave them out (and the BCa interval beats both)."""
    n, d, s, seeds = 20, 8, 0.8, 200
    truth = 1 - np.exp(-s * s)
    hits = {"out": 0, "counted": 0, "bca": 0}
    for seed in range(seeds):
        u = unit_rows(planted(np.random.default_rng(seed), np.full(n, s), d))
        w = next(bootstrap_weights(n, 1000, seed))
        out = weighted_dispersion(u, w)
        sums = w @ u
        counted = 1 - ((sums * sums).sum(1) - n) / (n * (n - 1))  # copies at distance 0
        for key, b in (("out", out), ("counted", counted)):
            lo, hi = np.quantile(b, [0.025, 0.975])
            hits[key] += lo <= truth <= hi
        lo, hi = bootstrap_ci(u, reps=1000, seed=seed)
        hits["bca"] += lo <= truth <= hi
    assert hits["counted"] + 6 <= hits["out"] <= hits["bca"] + 6, hits
    assert np.mean(counted) < np.mean(out)  # the downward shift of counting copies


# ------------------------------------------------------------------ ppl-vs-dispersion (across)

Z_LO, Z_HI, CURVE = 2.0, 8.0, 8


def _s_of(z: np.ndarray) -> np.ndarray:
    return 1.2 - 0.1 * (z - Z_LO)  # spread falls with log2 perplexity: dispersion falls too


def _population_slope() -> float:
    """OLS slope of population bin dispersion on log2 population bin mean perplexity."""
    edges = np.linspace(Z_LO, Z_HI, CURVE + 1)
    disp, lmean = [], []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        z = np.linspace(a, b, 20001)
        m = np.trapezoid(np.exp(-_s_of(z) ** 2 / 2), z) / (b - a)  # |E[u | bin]|
        disp.append(1 - m * m)
        lmean.append(np.log2(np.trapezoid(2.0**z, z) / (b - a)))
    return float(sps.linregress(lmean, disp).slope)


def _across_sample(seed: int, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.uniform(Z_LO, Z_HI, n)
    return 2.0**z, planted(rng, _s_of(z), d)


def _across_coverage(seeds: int, n: int, reps: int) -> tuple[float, float]:
    truth = _population_slope()
    binner = lambda p: select_bins(p, 20, 4).members  # noqa: E731
    hits = 0
    for seed in range(seeds):
        ppl, x = _across_sample(seed, n, 6)
        (a,) = across_stats(ppl, x, binner, CURVE, reps=reps, perms=0, seed=seed, device="cpu")
        hits += a.slope.ci_low <= truth <= a.slope.ci_high
        assert a.slope.method.startswith("BCa")
    return hits / seeds, truth


@pytest.mark.long  # ~13 min (400 seeds x 325 re-binnings); deselected by default
def test_ppl_dispersion_interval_covers_planted_slope_400_seeds():
    cov, truth = _across_coverage(400, 240, 300)
    assert truth < -0.02  # a planted effect, not a null
    assert 0.93 <= cov <= 0.97  # measured: 0.950 (380 of 400)


def test_ppl_dispersion_interval_covers_planted_slope():
    lo = sps.binom.ppf(0.0005, 30, 0.95)  # 99.9% band of a correct interval: 23..30 of 30
    assert lo == 23
    cov, _ = _across_coverage(30, 240, 100)
    assert cov >= lo / 30


def test_every_interval_contains_its_estimate():
    """Re-binned statistics (K Algorithm-1 bins over few segments: replicates with copies move
    the estimate) and the within statistics: lo <= estimate <= hi in every seed."""
    from repdisp.core.stats import within_stats

    binner = lambda p: select_bins(p, 8, 5).members  # noqa: E731
    for seed in range(30):
        ppl, x = _across_sample(seed, 60, 4)
        (a,) = across_stats(ppl, x, binner, 6, reps=60, perms=20, seed=seed, device="cpu")
        w = within_stats(ppl, x[:, 0] + 0.1 * np.log(ppl), reps=60, perms=20, seed=seed)
        for e in (a.pearson, a.spearman, a.curve_spearman, a.slope, w.spearman, w.slope):
            assert e.ci_low <= e.value <= e.ci_high, (seed, e)
            assert 1 / 21 <= e.p_perm <= 1
        assert np.isnan(a.pearson.p_value)  # no analytic p over bins for a segment statistic


# ------------------------------------------------------------------ K-bin r (across)
#
# Perplexity uniform on [10, 100], population dispersion D(p) = 0.2 + A·g(u), u = (p-10)/90,
# g(u) = u + sin(2πu)/2: at K = 5 targets spread evenly over [10, 100] (Algorithm 1's bins for
# N → ∞ at fixed B) Pearson and Spearman are both +0.6 (A = 0.6); A = 0 is the null (r = 0).
# bench/bench_kbin_r_coverage.py measures every candidate interval over 200 seeds.

def _kbin_sample(seed: int, amp: float, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(10, 100, n)
    u = (p - 10) / 90
    s = np.sqrt(-np.log(1 - (0.2 + amp * (u + 0.5 * np.sin(2 * np.pi * u)))))
    return p, planted(rng, s, 6)


def test_kbin_planted_value_is_what_the_docs_say():
    t = np.linspace(10, 100, 5)
    d = 0.2 + 0.6 * ((t - 10) / 90 + 0.5 * np.sin(2 * np.pi * (t - 10) / 90))
    assert np.corrcoef(t, d)[0, 1] == pytest.approx(0.6)
    assert sps.spearmanr(t, d)[0] == pytest.approx(0.6)


def _kbin_coverage(amp: float, truth: float, seeds: int, perms: int) -> tuple[float, float]:
    binner = lambda p: select_bins(p, 10, 5).members  # noqa: E731
    hits = agree = 0
    for seed in range(seeds):
        ppl, x = _kbin_sample(seed, amp)
        (a,) = across_stats(ppl, x, binner, 4, reps=2, perms=perms, seed=seed, device="cpu")
        for e in (a.pearson, a.spearman):
            assert e.method.startswith("permutation inversion on Fisher z"), e.method
            assert e.ci_low <= e.value <= e.ci_high
            hits += e.ci_low <= truth <= e.ci_high
            agree += (e.excludes_zero() != 0) == (e.p_perm <= 0.05 + 1e-12)
    return hits / (2 * seeds), agree / (2 * seeds)


@pytest.mark.parametrize("amp, truth", [(0.0, 0.0), (0.6, 0.6)], ids=["null", "effect"])
def test_kbin_r_interval_covers_planted_value_and_agrees_with_p_perm(amp, truth):
    """30 seeds x (Pearson, Spearman): at least the 99.9% binomial lower bound of a correct
    95% interval over 60 draws (50); CI excludes 0 exactly when p_perm <= 0.05. The BCa
    interval this replaced covered the null r = 0 in 69% (Pearson) of 200 seeds."""
    cov, agree = _kbin_coverage(amp, truth, 30, 99)
    assert cov >= sps.binom.ppf(0.0005, 60, 0.95) / 60, cov
    assert agree == 1.0
