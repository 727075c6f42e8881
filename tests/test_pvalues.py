"""p-values (core.permutation, core.correlation): exact for small n against scipy's own exact
enumeration and brute force over itertools.permutations; never 0; printed at their floor."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from repdisp.core.correlation import correlation
from repdisp.core.permutation import P_FLOOR, format_p, p_perm
from repdisp.core.stats import Estimate, within_stats


def _brute(fn, x, y) -> float:
    obs = abs(fn(x, y)[0])
    vals = np.array([fn(x, np.asarray(p))[0] for p in itertools.permutations(y)])
    return float(np.mean(np.abs(vals) >= obs - 1e-12))


def test_four_monotone_points_have_exact_p_one_twelfth_not_zero():
    c = correlation([1, 2, 3, 4], [9.0, 7.0, 4.0, 1.0], "spearman", reps=500)
    assert c.r == pytest.approx(-1.0)
    assert c.p_value == pytest.approx(1 / 12)  # identity and reversal of 4! orderings
    assert sps.spearmanr([1, 2, 3, 4], [9, 7, 4, 1])[1] == 0  # what scipy's asymptotic p says
    assert c.p_method.startswith("exact") and "p=0.0833" in str(c)
    assert c.ci_low <= c.r <= c.ci_high


@pytest.mark.parametrize("method", ["pearson", "spearman", "kendall"])
def test_exact_p_equals_brute_force_over_all_orderings(method):
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=7), rng.normal(size=7)
    y[3] = y[1]  # a tie in y
    fn = {"pearson": sps.pearsonr, "spearman": sps.spearmanr, "kendall": sps.kendalltau}[method]
    c = correlation(x, y, method, reps=300)
    assert c.p_value == pytest.approx(_brute(fn, x, y), abs=1e-12)
    assert c.ci_low <= c.r <= c.ci_high


def test_kendall_exact_matches_scipy_exact_distribution():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=8), rng.normal(size=8)  # no ties: scipy's exact null of tau
    c = correlation(x, y, "kendall", reps=100)
    assert c.p_value == pytest.approx(sps.kendalltau(x, y, method="exact").pvalue, rel=1e-9)


def test_large_n_keeps_scipy_p_floored_above_zero():
    x = np.arange(40.0)
    c = correlation(x, 2 * x + 1, "pearson", reps=100)
    assert c.p_value == P_FLOOR and c.p_method == "scipy asymptotic"
    assert format_p(c.p_value) == "p<2.2e-16"
    rng = np.random.default_rng(0)
    y = rng.normal(size=40)
    assert correlation(x, y, "spearman", reps=50).p_value == pytest.approx(sps.spearmanr(x, y)[1])


def test_permutation_p_floor_and_printing():
    null = np.array([0.1, -0.2, 0.05] * 333 + [0.0])
    assert p_perm(0.5, null) == 1 / 1001  # no shuffle beats it: the floor, never 0
    assert p_perm(0.1, null) == pytest.approx((1 + 666) / 1001)
    assert format_p(1 / 1001, 1000) == "p<1/1001" and format_p(0.25, 1000) == "p=0.25"
    assert format_p(float("nan")) == ""
    e = Estimate("slope", -0.5, -0.7, -0.3, float("nan"), 1 / 1001, 50, "BCa", 1000)
    assert str(e) == "slope -0.500 [-0.700, -0.300] p_perm<1/1001 n=50"


def test_within_stats_small_n_p_is_exact():
    ppl = np.array([3.0, 10.0, 5.0, 40.0, 20.0, 7.0])
    disp = np.array([0.5, 0.42, 0.47, 0.3, 0.41, 0.4])
    w = within_stats(ppl, disp, reps=200, perms=200, seed=0)
    assert w.spearman.p_value == pytest.approx(_brute(sps.spearmanr, ppl, disp), abs=1e-12)
    lx = np.log2(ppl)
    slope = lambda a, b: (sps.linregress(a, b).slope,)  # noqa: E731
    assert w.slope.p_value == pytest.approx(_brute(slope, lx, disp), abs=1e-12)
    assert w.spearman.p_value >= 2 / 720  # the smallest exact p of 6 points
    for e in (w.spearman, w.slope):
        assert e.ci_low <= e.value <= e.ci_high and "BCa" in e.method
