"""Coverage of interval methods for the re-binned K-bin Pearson/Spearman r (``across_stats``).

Synthetic segments: perplexity uniform on [10, 100]; unit vectors from the planted population of
``tests/test_coverage.py`` with population dispersion D(p) = 1 - exp(-s(p)²). Null: s constant
(population r = 0). Effect: D(p) = D0 + A·g((p - 10)/90), whose value at K targets spread
uniformly over [10, 100] (the N → ∞ limit of Algorithm 1's bins with B fixed) gives the planted r.
Each seed: K = 5 Algorithm-1 bins of B = 10 out of N = 200 segments; R bootstraps over segments
(re-binned), R permutations of perplexity, a 25-group jackknife and R half-samples without
replacement; every candidate interval is made from the same draws.

Usage: python bench/bench_kbin_r_coverage.py [seeds] [reps]
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from scipy import stats as sps
from scipy.special import ndtr, ndtri

from repdisp.analyses.binning import select_bins
from repdisp.core.bootstrap import acceleration, bca_interval, jackknife_groups
from repdisp.core.correlation import row_corr, row_spearman
from repdisp.core.geometry import unit_rows, weighted_dispersion
from repdisp.core.permutation import p_perm

N, K, DIM, LO, HI = 200, 5, 6, 10.0, 100.0
AMP = float(os.environ.get("KBIN_AMP", "0.6"))
B = int(os.environ.get("KBIN_B", "10"))  # segments per bin


def g(u):
    return u + 0.5 * np.sin(2 * np.pi * u)  # non-monotone: K-point r moderate


def disp_of(p, amp):
    return 0.2 + amp * g((p - LO) / (HI - LO))


def planted_r(amp):
    if amp == 0:
        return 0.0, 0.0
    t = np.linspace(LO, HI, K)
    d = disp_of(t, amp)
    return float(np.corrcoef(t, d)[0, 1]), float(sps.spearmanr(t, d)[0])


HD = int(os.environ.get("KBIN_HD", "0"))  # >0: u = normalise(a·e1 + g/sqrt(HD)), g ~ N(0, I_HD)


def hd_units(rng, d_target):
    """High-dimensional population: D ≈ d_target with little noise per pair (strong effects)."""
    a = np.sqrt((1 - d_target) / d_target)
    x = rng.normal(size=(len(a), HD)) / np.sqrt(HD)
    x[:, 0] += a
    return unit_rows(x)


def hd_truth(amp):
    rng = np.random.default_rng(123)
    t = np.linspace(LO, HI, K)
    d = []
    for tk in t:
        uu = hd_units(rng, np.full(40000, disp_of(tk, amp)))
        m = uu.mean(0)
        d.append(1 - (m @ m * 40000**2 - 40000) / (40000 * 39999))
    return float(np.corrcoef(t, d)[0, 1]), float(sps.spearmanr(t, d)[0])


def sample(rng, amp):
    p = rng.uniform(LO, HI, N)
    if HD:
        return p, hd_units(rng, disp_of(p, amp))
    s = np.sqrt(-np.log(1 - disp_of(p, amp)))
    phi = rng.normal(0, 1, N) * s
    v = rng.normal(size=(N, DIM - 1))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return p, unit_rows(np.column_stack([np.cos(phi), np.sin(phi)[:, None] * v]))


def kbin(p_draw, ids, u, draws):
    """Pearson and Spearman r over K bins for each draw (p values, the rows of u they read)."""
    w = np.zeros((len(draws) * K, N))
    means = np.zeros((len(draws), K))
    for j, (pv, iv) in enumerate(zip(p_draw, ids, strict=True)):
        for k, m in enumerate(select_bins(pv, B, K).members):
            np.add.at(w[j * K + k], iv[m], 1.0)
            means[j, k] = pv[m].mean()
    d = weighted_dispersion(u, w).reshape(len(draws), K)
    return row_corr(means, d), row_spearman(means, d)


def intervals(est, boots, jack, null, sub, m):
    """Each candidate's 95% interval of one statistic (all contain est after widening)."""
    za = ndtri(np.array([0.025, 0.975]))
    z = np.arctanh(np.clip(est, -0.9999, 0.9999))
    zb = np.arctanh(np.clip(boots, -0.9999, 0.9999))
    zn = np.arctanh(np.clip(null, -0.9999, 0.9999))
    zs = np.arctanh(np.clip(sub, -0.9999, 0.9999))
    out = {"bca": bca_interval(est, boots, jack)}
    a = acceleration(jack)
    q = ndtr(za / np.maximum(1 - a * za, 1e-6))
    out["acc_only"] = tuple(np.quantile(boots, q))
    lo, hi = np.quantile(boots, [0.025, 0.975])
    out["basic"] = (2 * est - hi, 2 * est - lo)
    lo, hi = np.quantile(zb, [0.025, 0.975])
    out["basic_z"] = (np.tanh(2 * z - hi), np.tanh(2 * z - lo))
    sd = zb.std(ddof=1)
    out["normal_z"] = (np.tanh(z - 1.96 * sd), np.tanh(z + 1.96 * sd))
    h = np.quantile(np.abs(zn), 0.95)
    out["perm_z"] = (np.tanh(z - h), np.tanh(z + h))
    lo, hi = np.quantile(zs - z, [0.025, 0.975])
    f = np.sqrt(m / N)
    out["moon_z"] = (np.tanh(z - f * hi), np.tanh(z - f * lo))
    out["sub_z"] = (np.tanh(z - hi), np.tanh(z - lo))
    return {k: (min(lo, est), max(hi, est)) for k, (lo, hi) in out.items()}


def run(seeds, reps, amp):
    truth = hd_truth(amp) if HD and amp else planted_r(amp)
    m = N // 2
    hits: dict = {}
    agree: dict = {}
    sig = [0, 0]
    ests = [[], []]
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        p, u = sample(rng, amp)
        ids = np.arange(N)
        bi = [rng.integers(0, N, N) for _ in range(reps)]
        pi = [rng.permutation(N) for _ in range(reps)]
        si = [rng.permutation(N)[:m] for _ in range(reps)]
        jk = jackknife_groups(N)
        obs = kbin([p], [ids], u, [0])
        bo = kbin([p[i] for i in bi], bi, u, bi)
        nu = kbin([p[i] for i in pi], [ids] * reps, u, pi)
        su = kbin([p[i] for i in si], si, u, si)
        ja = kbin([p[i] for i in jk], jk, u, jk)
        for j in range(2):
            est = float(obs[j][0])
            ests[j].append(est)
            pp = p_perm(est, nu[j])
            sig[j] += pp < 0.05
            for name, (lo, hi) in intervals(est, bo[j], ja[j], nu[j], su[j], m).items():
                key = (j, name)
                hits[key] = hits.get(key, 0) + (lo <= truth[j] <= hi)
                agree[key] = agree.get(key, 0) + ((lo > 0 or hi < 0) == (pp < 0.05))
    return truth, hits, agree, sig, ests


def main():
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    for label, amp in (("null", 0.0), ("effect", AMP)):
        t0 = time.time()
        truth, hits, agree, sig, ests = run(seeds, reps, amp)
        print(f"== {label}: planted pearson {truth[0]:+.3f} spearman {truth[1]:+.3f}; "
              f"{seeds} seeds, {reps} draws, {time.time() - t0:.0f}s")
        for j, stat in enumerate(("pearson", "spearman")):
            print(f"  {stat}: mean est {np.mean(ests[j]):+.3f}, p_perm<0.05 in {sig[j] / seeds:.3f}")
            for (jj, name), h in sorted(hits.items()):
                if jj == j:
                    print(f"    {name:9s} coverage {h / seeds:.3f}  agree(p_perm) "
                          f"{agree[(jj, name)] / seeds:.3f}")


if __name__ == "__main__":
    main()
