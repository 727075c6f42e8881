"""The stacked all-draws path of the across-segment statistics (``core.across``) against the
per-draw loop it replaced (``core.stats.PER_DRAW``), on synthetic cells: every number equal to
1e-12, including draws with a bin of copies of one segment (nan dispersions, the fallback)."""

from __future__ import annotations

import numpy as np
import pytest

import repdisp.core.stats as cs
from repdisp.analyses.binning import segment_stats, select_bins
from repdisp.core.settings import Statistics


def _flat(o, out):
    if isinstance(o, dict):
        for k in sorted(o):
            _flat(o[k], out)
    elif isinstance(o, list | tuple):
        for v in o:
            _flat(v, out)
    elif isinstance(o, int | float) and not isinstance(o, bool):
        out.append(float(o))
    return out


def _both(monkeypatch, fn):
    out = []
    for flag in (True, False):
        monkeypatch.setattr(cs, "PER_DRAW", flag)
        out.append(np.array(_flat(fn(), [])))
    return out


def _cell(n, sites, d, seed):
    rng = np.random.default_rng(seed)
    ppl = np.exp(rng.normal(3, 0.5, n))
    drift = np.log(ppl)[:, None] * rng.normal(size=d) * 0.05
    vecs = [(rng.normal(size=(n, d)) + 0.3 + s * drift).astype(np.float32) for s in range(sites)]
    return ppl, vecs, np.stack([rng.random(n) for _ in range(sites)])


@pytest.mark.parametrize("n,reps", [(300, 40), (120, 25)])
def test_stacked_sites_equal_the_per_draw_path(monkeypatch, n, reps):
    ppl, vecs, within = _cell(n, 5, 24, n)
    st = Statistics(bin_size=10, n_bins=6, bootstrap=200, seed=3, curve_bins=20,
                    stats_reps=reps, permutations=reps)  # fmt: skip
    ref, new = _both(monkeypatch, lambda: segment_stats(ppl, within, vecs, st))
    assert len(ref) == len(new) > 100
    assert (np.isnan(ref) == np.isnan(new)).all()
    ok = ~np.isnan(ref)
    assert np.abs(ref[ok] - new[ok]).max() <= 1e-12
    # the numbers are not trivial: at least the planted site's across slopes differ by site
    assert np.unique(new[ok].round(6)).size > 50


def test_bins_of_copies_fall_back_to_the_per_draw_statistics(monkeypatch):
    # bins of 2 from 24 segments: bootstrap copies make one-segment bins (nan dispersion) often
    ppl, vecs, _ = _cell(24, 2, 6, 1)
    binner = lambda p: select_bins(p, 2, 4).members  # noqa: E731
    ref, new = _both(monkeypatch, lambda: [a.to_dict() for a in cs.across_stats(
        ppl, vecs, binner, curve_bins=4, reps=60, perms=30, seed=2, device="cpu")])  # fmt: skip
    assert (np.isnan(ref) == np.isnan(new)).all()
    ok = ~np.isnan(ref)
    assert np.abs(ref[ok] - new[ok]).max() <= 1e-12
