"""Segment-level statistics (repdisp.core.stats): scipy agreement, brute-force dispersion of
resampled bins, planted effects recovered inside their CIs, and the false-positive rate at 5%."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from repdisp.analyses.binning import bin_points, correlate, select_bins
from repdisp.core.errors import RepdispError
from repdisp.core.stats import (
    across_stats,
    equal_bins,
    group_dispersion,
    unit_vectors,
    within_stats,
)


def _brute_multiset(x: np.ndarray, ids: np.ndarray) -> float:
    """Mean cosine distance over pairs of draws whose original segments differ (float64)."""
    u = x[ids] / np.linalg.norm(x[ids], axis=1, keepdims=True)
    c = u @ u.T
    i, j = np.triu_indices(len(ids), 1)
    keep = ids[i] != ids[j]
    return float(np.mean(1 - c[i[keep], j[keep]]))


def test_group_dispersion_vs_brute_force_with_copies():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 5)) + 0.7
    u = unit_vectors(x)
    groups = [np.arange(10), np.array([1, 1, 2, 5, 5, 5, 7]), np.array([4, 9]), np.array([3, 3])]
    d = group_dispersion(u, groups)
    for g, got in zip(groups[:3], d[:3], strict=True):
        assert got == pytest.approx(_brute_multiset(x, g), abs=1e-12)
    assert np.isnan(d[3])  # two copies of one segment: no pair of distinct segments
    i, j = np.triu_indices(10, 1)  # plain Eq. 1 when every segment appears once
    c = u[:10] @ u[:10].T
    assert d[0] == pytest.approx(float(np.mean(1 - c[i, j])), abs=1e-12)


def test_within_matches_scipy_and_recovers_planted_slope():
    rng = np.random.default_rng(0)
    n, planted = 800, -0.02
    ppl = rng.lognormal(3, 0.8, n)
    disp = 0.4 + planted * np.log2(ppl) + rng.normal(0, 0.03, n)
    w = within_stats(ppl, disp, reps=500, perms=500, seed=1)
    ref = sps.spearmanr(ppl, disp)
    assert w.spearman.value == pytest.approx(ref[0], abs=1e-12)
    assert w.spearman.p_value == pytest.approx(ref[1], rel=1e-9)
    lin = sps.linregress(np.log2(ppl), disp)
    assert w.slope.value == pytest.approx(lin.slope, abs=1e-12)
    assert w.slope.ci_low < planted < w.slope.ci_high
    assert w.slope.ci_high < 0 and w.spearman.ci_high < 0
    # the bootstrap CI is about +-1.96 standard errors of the OLS slope
    assert w.slope.ci_high - w.slope.ci_low == pytest.approx(2 * 1.96 * lin.stderr, rel=0.25)
    assert w.spearman.p_perm == pytest.approx(1 / 501)  # no shuffle beats the planted effect
    with pytest.raises(RepdispError):
        within_stats(ppl[:2], disp[:2])


def _planted_across(rng, n: int, d: int, strength: float):
    """Segment vectors whose spread shrinks with log perplexity: dispersion falls with ppl."""
    ppl = rng.lognormal(3, 0.8, n)
    z = (np.log(ppl) - 3) / 0.8
    noise = rng.normal(size=(n, d)) * np.exp(-strength * z)[:, None]
    return ppl, noise + 1.0


def test_across_matches_paper_numbers_and_recovers_planted_effect():
    rng = np.random.default_rng(5)
    ppl, x = _planted_across(rng, 1000, 8, 0.3)
    binner = lambda p: select_bins(p, 50, 10).members  # noqa: E731
    (a,) = across_stats(ppl, x, binner, curve_bins=50, reps=300, perms=300, seed=2)
    # the observed K-bin Pearson/Spearman are the paper-style numbers
    sel = select_bins(ppl, 50, 10)
    points = bin_points(ppl, x, rng.random(len(ppl)), sel)
    paper = correlate(points, reps=10)["across"]
    assert a.pearson.value == pytest.approx(paper["pearson"].r, abs=1e-12)
    assert a.spearman.value == pytest.approx(paper["spearman"].r, abs=1e-12)
    # the curve: 50 equal-count bins of 20, dispersion = brute force, slope = scipy's
    assert a.curve_bins == 50 and sum(c["n"] for c in a.curve) == 1000
    bins = equal_bins(ppl, 50)
    assert a.curve[7]["dispersion"] == pytest.approx(_brute_multiset(x, bins[7]), abs=1e-12)
    m = [c["mean_ppl"] for c in a.curve]
    dc = [c["dispersion"] for c in a.curve]
    assert a.slope.value == pytest.approx(sps.linregress(np.log2(m), dc).slope, abs=1e-12)
    assert a.curve_spearman.value == pytest.approx(sps.spearmanr(m, dc)[0], abs=1e-12)
    # planted: negative slope, CI excludes 0, permutation p at its floor; and the slope of a
    # 20x larger sample from the same model lies inside the CI
    assert a.slope.excludes_zero() == -1 and a.pearson.excludes_zero() == -1
    assert a.slope.p_perm == pytest.approx(1 / 301)
    big_ppl, big_x = _planted_across(np.random.default_rng(99), 20000, 8, 0.3)
    big = group_dispersion(unit_vectors(big_x), equal_bins(big_ppl, 50))
    big_m = [big_ppl[b].mean() for b in equal_bins(big_ppl, 50)]
    truth = sps.linregress(np.log2(big_m), big).slope
    assert a.slope.ci_low < truth < a.slope.ci_high


def test_null_false_positive_rate_is_five_percent():
    """400 null datasets: p < 0.05 (<= for the discrete permutation p) in 5% of them.

    Tolerance: the 99.9% binomial band of 400 draws at 0.05: 7..36 rejections (1.75%-9%). A test
    that rejects 15% of null datasets lands above it with probability 0.9998 (12%: 0.965)."""
    lo, hi = sps.binom.ppf([0.0005, 0.9995], 400, 0.05)
    assert (lo, hi) == (7, 36)
    rng = np.random.default_rng(2024)
    binner = lambda p: select_bins(p, 10, 5).members  # noqa: E731
    hits = {"within scipy": 0, "within perm": 0, "slope scipy": 0, "across perm": 0}
    for _ in range(400):
        ppl = rng.lognormal(3, 0.8, 100)
        w = within_stats(ppl, rng.normal(size=100), reps=0, perms=39, seed=int(rng.integers(1e9)))
        hits["within scipy"] += w.spearman.p_value < 0.05
        hits["within perm"] += w.spearman.p_perm <= 0.05
        hits["slope scipy"] += w.slope.p_value < 0.05
        (a,) = across_stats(
            ppl, rng.normal(size=(100, 3)) + 0.5, binner, 10, reps=0, perms=19,
            seed=int(rng.integers(1e9)),
        )
        hits["across perm"] += a.pearson.p_perm <= 0.05
    for name, k in hits.items():
        assert lo <= k <= hi, f"{name}: {k}/400 rejections at 5%"


def test_n_to_decide_predicts_where_a_bootstrap_ci_reaches_zero():
    """At the predicted N, a bootstrap CI of a mean (same estimate, same spread) has a half-width
    equal to |estimate|: its edge sits at 0, within bootstrap noise."""
    from repdisp.core.stats import mean_ci, n_to_decide

    rng = np.random.default_rng(0)

    def sample(n, mu=0.1):
        z = rng.normal(size=n)
        return (z - z.mean()) / z.std() + mu  # mean exactly mu, spread exactly 1

    x = sample(100)
    lo, hi = mean_ci(x, 4000, 0)
    assert lo < 0 < hi  # undecided at N = 100
    m = n_to_decide(100, x.mean(), lo, hi)
    assert 300 < m < 480  # (1.96 / 0.1)^2 = 384 in the normal approximation
    lo_m, hi_m = mean_ci(sample(round(m)), 4000, 1)
    assert abs(lo_m) < 0.012 and hi_m == pytest.approx(0.2, abs=0.012)
    assert n_to_decide(100, 0.0, -1, 1) == float("inf")
    assert n_to_decide(100, 0.5, 0.1, 0.9) < 100  # already decided
    # a lopsided percentile CI that just covers 0 needs more segments, never fewer
    assert n_to_decide(1410, 0.0023, -0.00002, 0.0046) == pytest.approx(1410 * (0.00232 / 0.0023) ** 2)


def test_gpu_path_equals_the_cpu_path(monkeypatch):
    """The dense float64 GEMM path (what a CUDA device runs) gives the scipy sparse path's
    numbers: here it runs on a CPU tensor by pointing stats_device at the CPU."""
    import torch

    import repdisp.core.stats as st

    rng = np.random.default_rng(4)
    n, d = 300, 16
    ppl = np.exp(rng.normal(3, 0.5, n))
    mats = [rng.normal(size=(n, d)) + np.log(ppl)[:, None] * 0.1, rng.normal(size=(n, d))]
    units = unit_vectors(mats[0])
    groups = [rng.integers(0, n, 40) for _ in range(7)]  # copies included
    on_cpu = group_dispersion(units, groups)
    rows = torch.from_numpy(np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)]))
    cols = torch.from_numpy(np.concatenate(groups))
    dense = st._weights_dispersion(torch.from_numpy(units), rows, cols, len(groups))
    np.testing.assert_allclose(dense, on_cpu, rtol=0, atol=1e-12)

    def binner(p):
        return select_bins(p, 15, 6).members

    ref = [a.to_dict() for a in across_stats(ppl, mats, binner, 20, 40, 30, 0, device="cpu")]
    monkeypatch.setattr(st, "stats_device", lambda device="auto": torch.device("cpu"))
    got = [a.to_dict() for a in across_stats(ppl, mats, binner, 20, 40, 30, 0)]
    for a, b in zip(ref, got, strict=True):
        for key in ("pearson", "spearman", "curve_spearman", "slope"):
            for f in ("value", "ci_low", "ci_high", "p_perm"):
                assert b[key][f] == pytest.approx(a[key][f], abs=1e-10), (key, f)
        np.testing.assert_allclose(
            [c["dispersion"] for c in b["curve"]], [c["dispersion"] for c in a["curve"]], atol=1e-12
        )
