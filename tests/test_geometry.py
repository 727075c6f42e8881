"""geometry: every statistic against an independent brute-force float64 or scipy reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import sparse as sp_sparse
from scipy.spatial.distance import cdist

from repdisp.core.bootstrap import bootstrap_ci
from repdisp.core.errors import RepdispError
from repdisp.core.geometry import (
    CosineStats,
    cluster_distances,
    dispersion,
    mean_euclidean,
    mean_sq_euclidean,
    per_example_scores,
    unit_rows,
    weighted_dispersion,
)


def cosine_distances(x):
    return cdist(x, x, "cosine")


def euclidean_distances(x):
    return cdist(x, x, "euclidean")


def brute_cosine_matrix(x: np.ndarray) -> np.ndarray:
    """Full N×N cosine-distance matrix in float64, from scratch."""
    x = np.asarray(x, dtype=np.float64)
    u = x / np.sqrt((x * x).sum(axis=1, keepdims=True))
    return 1.0 - u @ u.T


def brute_dispersion(x: np.ndarray) -> float:
    """Mean over i<j of the cosine distance, by explicit pairs."""
    d = brute_cosine_matrix(x)
    i, j = np.triu_indices(len(d), k=1)
    return float(d[i, j].mean())


def upper_mean(m: np.ndarray) -> float:
    i, j = np.triu_indices(len(m), k=1)
    return float(m[i, j].mean())


def cone(n: int, d: int, spread: float, seed: int) -> np.ndarray:
    """Anisotropic data: vectors in a narrow cone around one direction, with uneven axis scales."""
    rng = np.random.default_rng(seed)
    axis = rng.standard_normal(d)
    scales = np.linspace(0.2, 3.0, d)
    return (5.0 * axis + spread * scales * rng.standard_normal((n, d))).astype(np.float32)


@pytest.fixture
def iso():
    return np.random.default_rng(1).standard_normal((300, 48))


def test_dispersion_matches_brute_force_and_scipy(iso):
    got = dispersion(iso)
    assert got == pytest.approx(brute_dispersion(iso), rel=1e-9, abs=0)
    assert got == pytest.approx(upper_mean(cosine_distances(iso)), rel=1e-9, abs=0)
    assert 0.9 < got < 1.1  # isotropic Gaussian: near-orthogonal pairs


def test_dispersion_anisotropic_narrow_cone():
    x = cone(400, 64, spread=0.45, seed=2)
    ref = brute_dispersion(x)
    assert 0.003 < ref < 0.03  # really a narrow cone, dispersion ~0.01
    assert dispersion(x) == pytest.approx(ref, rel=1e-9, abs=0)
    assert dispersion(x) == pytest.approx(
        upper_mean(cosine_distances(x.astype(np.float64))), rel=1e-9, abs=0
    )


@settings(max_examples=40, deadline=None, database=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(2, 30), st.integers(1, 8)),
        elements=st.floats(-1e3, 1e3, allow_nan=False).filter(lambda v: abs(v) > 1e-3),
    )
)
def test_dispersion_property_vs_brute_force(x):
    assert dispersion(x) == pytest.approx(brute_dispersion(x), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_tensor_input(dtype):
    t = torch.from_numpy(cone(200, 32, 0.8, seed=3)).to(dtype)
    ref = brute_dispersion(t.float().numpy())  # the values the tensor really holds
    assert dispersion(t) == pytest.approx(ref, rel=1e-9, abs=0)
    assert per_example_scores(t) == pytest.approx(
        brute_cosine_matrix(t.float().numpy()).sum(1) / 199, rel=1e-9
    )


def test_merge_of_halves_equals_whole(iso):
    a = CosineStats().update(iso[:123])
    b = CosineStats().update(iso[123:])
    whole = CosineStats().update(iso)
    merged = a.merge(b)
    assert merged.count == whole.count == len(iso)
    np.testing.assert_allclose(merged.total, whole.total, rtol=1e-12)
    assert merged.dispersion == pytest.approx(brute_dispersion(iso), rel=1e-9, abs=0)
    assert CosineStats().merge(CosineStats()).count == 0  # merging empty stats is a no-op


def test_streaming_chunks_and_roundtrip():
    x = cone(700, 2048, 1.5, seed=4)  # at d=2048 update() works in blocks of 256 rows
    stats = CosineStats()
    for start, stop in [(0, 1), (1, 7), (7, 600), (600, 700)]:
        stats.update(x[start:stop])
    ref = brute_dispersion(x)
    assert stats.dispersion == pytest.approx(ref, rel=1e-9, abs=0)
    again = CosineStats.from_dict(stats.to_dict())
    assert again.count == 700 and again.dispersion == stats.dispersion


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_vectors_raise(n):
    x = np.ones((n, 4))
    for f in (dispersion, per_example_scores, mean_euclidean, mean_sq_euclidean, bootstrap_ci):
        with pytest.raises(RepdispError, match="at least 2"):
            f(x)


def test_not_a_matrix_raises():
    with pytest.raises(RepdispError, match="2-D"):
        dispersion(np.ones(5))


def test_zero_vectors_error_or_drop(iso):
    x = iso.copy()
    x[[3, 70]] = 0.0
    with pytest.raises(RepdispError, match="zero vector"):
        dispersion(x)
    with pytest.warns(UserWarning, match="dropping 2 zero"):
        got = dispersion(x, zero="drop")
    kept = np.delete(x, [3, 70], axis=0)
    assert got == pytest.approx(brute_dispersion(kept), rel=1e-9, abs=0)
    with pytest.raises(RepdispError, match="zero vector"):
        per_example_scores(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_raise(iso, bad):
    x = iso.copy()
    x[5, 2] = bad
    for f in (dispersion, per_example_scores, mean_euclidean, mean_sq_euclidean):
        with pytest.raises(RepdispError, match="NaN or inf"):
            f(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN must not be dropped silently either
        with pytest.raises(RepdispError):
            dispersion(x, zero="drop")


def test_per_example_scores_vs_brute_force():
    x = cone(150, 24, 1.0, seed=5)
    m = brute_cosine_matrix(x)
    ref = m.sum(axis=1) / (len(x) - 1)  # diagonal is 0 (up to rounding)
    np.testing.assert_allclose(per_example_scores(x), ref, rtol=1e-9, atol=1e-12)
    # the mean of per-example scores is the dispersion
    assert per_example_scores(x).mean() == pytest.approx(dispersion(x), rel=1e-9)


def test_euclidean_means_vs_scipy():
    x = cone(257, 12, 2.0, seed=6)  # 257: not a multiple of the block sizes below
    ed = euclidean_distances(x.astype(np.float64))
    ref = upper_mean(ed)
    assert mean_euclidean(x) == pytest.approx(ref, rel=1e-9)
    assert mean_euclidean(x, block=16) == pytest.approx(ref, rel=1e-9)
    assert mean_sq_euclidean(x) == pytest.approx(upper_mean(ed**2), rel=1e-9)


def test_cluster_distances_vs_brute_force():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((120, 10)) + np.repeat(np.eye(10)[:3] * 4, 40, axis=0)
    labels = np.repeat(["a", "b", "c"], 40)
    got = cluster_distances(x, labels)
    within, centroids = [], []
    for g in ("a", "b", "c"):
        members = x[labels == g]
        c = members.mean(axis=0)
        centroids.append(c)
        cos = members @ c / (np.linalg.norm(members, axis=1) * np.linalg.norm(c))
        within.append(float(np.mean(1.0 - cos)))
    np.testing.assert_allclose(got.within_per_cluster, within, rtol=1e-9)
    assert got.within == pytest.approx(np.mean(within), rel=1e-9)
    assert got.between == pytest.approx(upper_mean(cosine_distances(np.stack(centroids))), 1e-9)
    with pytest.raises(RepdispError, match="at least 2 clusters"):
        cluster_distances(x, np.zeros(120))
    with pytest.raises(RepdispError, match="labels"):
        cluster_distances(x, labels[:-1])


def test_bootstrap_ci_deterministic_and_contains_estimate():
    x = cone(300, 16, 1.0, seed=8)
    point = dispersion(x)
    lo, hi = bootstrap_ci(x, reps=400, seed=3)
    assert (lo, hi) == bootstrap_ci(x, reps=400, seed=3)
    assert (lo, hi) != bootstrap_ci(x, reps=400, seed=4)
    assert lo < point < hi
    assert hi - lo < 0.5 * point  # a CI, not the whole range
    lo90, hi90 = bootstrap_ci(x, reps=400, seed=3, level=0.9)
    assert lo <= lo90 and hi90 <= hi


def test_weighted_dispersion_vs_multiset_brute_force():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((20, 6))
    units = unit_rows(x)
    weights = rng.integers(0, 4, size=(5, 20))
    weights[:, 0] += 1  # every multiset has at least 2 elements
    weights[:, 1] += 1
    got = weighted_dispersion(units, weights)
    sparse_got = weighted_dispersion(units, sp_sparse.csr_matrix(weights))
    for w, g, gs in zip(weights, got, sparse_got, strict=True):
        ids = np.repeat(np.arange(20), w)  # the multiset: original k appears w[k] times
        c = brute_cosine_matrix(x[ids])
        i, j = np.triu_indices(len(ids), 1)
        keep = ids[i] != ids[j]  # pairs of copies of one original are left out
        assert g == pytest.approx(float(c[i[keep], j[keep]].mean()), rel=1e-9, abs=1e-12)
        assert gs == pytest.approx(g, abs=1e-12)
    assert np.isnan(weighted_dispersion(units, np.eye(20)[:1] * 3)[0])  # copies of one original
    plain = weighted_dispersion(units, np.ones((1, 20)))[0]  # every original once: Eq. 1
    assert plain == pytest.approx(brute_dispersion(x), abs=1e-12)


def test_zero_rows_in_later_block_and_other_dtypes():
    x = cone(600, 2048, 1.0, seed=10)  # three blocks of rows inside CosineStats.update
    x[[5, 300, 599]] = 0.0
    with pytest.warns(UserWarning, match="dropping 1 zero"):  # one warning per block
        stats = CosineStats(zero="drop").update(x)
    kept = np.delete(x, [5, 300, 599], axis=0)
    assert stats.count == 597
    assert stats.dispersion == pytest.approx(brute_dispersion(kept), rel=1e-9, abs=0)
    small = np.random.default_rng(11).integers(-5, 6, size=(40, 7))
    small[np.abs(small).sum(1) == 0, 0] = 9  # no zero rows
    assert dispersion(small) == pytest.approx(brute_dispersion(small), rel=1e-9)
    half = cone(50, 8, 1.0, seed=12).astype(np.float16)
    assert dispersion(half) == pytest.approx(brute_dispersion(half), rel=1e-9)
