"""Permutation and exact p-values; how every p-value is floored and printed.

All tests are two-sided on |t|. With t the observed statistic and t*_1..t*_R the statistic of
R random shufflings of one variable,

    p_perm = (1 + #{|t*| >= |t|}) / (1 + R)         (never below 1/(R+1), never 0),

and with n small enough to list every permutation (n <= ``EXACT_MAX_N``) the exact p is the
fraction of all n! orderings, the observed one included, with |t*| >= |t|: for a rank
correlation of 4 points at its extreme it is 2/24 = 1/12. No asymptotic (scipy) p is reported
for n < 10. An asymptotic p for larger n is floored at ``P_FLOOR`` (float64 epsilon: below it
the tail approximation carries no information); ``format_p`` prints a floored p as ``p<…``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

EXACT_MAX_N = 9  # 9! = 362,880 orderings, enumerated in chunks
ASYMPTOTIC_MIN_N = 10  # below this only exact or permutation p-values
P_FLOOR = float(np.finfo(np.float64).eps)
_TOL = 1e-12  # |t*| >= |t| - tol: ties in exact arithmetic stay ties in floating point


def p_perm(observed: float, null: np.ndarray) -> float:
    """Two-sided Monte Carlo permutation p, (1 + #{|t*| >= |t|}) / (1 + R); nan if undefined."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or len(null) == 0:
        return float("nan")
    return float((1 + np.sum(np.abs(null) >= abs(observed) - _TOL)) / (1 + len(null)))


def all_permutations(n: int, chunk: int = 1 << 16) -> list[np.ndarray]:
    """Every ordering of range(n) as rows of int arrays, in chunks of at most ``chunk`` rows."""
    if n > EXACT_MAX_N:
        raise ValueError(f"{n}! orderings are too many to list (at most {EXACT_MAX_N})")
    it = itertools.permutations(range(n))
    out = []
    while True:
        block = list(itertools.islice(it, chunk))
        if not block:
            return out
        out.append(np.array(block, dtype=np.intp))


def exact_p(
    stat: Callable[[np.ndarray, np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray
) -> float:
    """Exact two-sided p of ``stat`` under every ordering of ``y`` against ``x``.

    ``stat(X, Y)`` takes (P, n) rows and returns P statistics; the observed value is
    ``stat(x[None], y[None])``. Orderings where the statistic is undefined (nan) are left out.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    obs = float(stat(x[None], y[None])[0])
    if not np.isfinite(obs):
        return float("nan")
    hits = total = 0
    for perm in all_permutations(len(y)):
        t = stat(np.broadcast_to(x, perm.shape), y[perm])
        ok = np.isfinite(t)
        hits += int(np.sum(np.abs(t[ok]) >= abs(obs) - _TOL))
        total += int(ok.sum())
    return hits / total if total else float("nan")


def floor_p(p: float) -> float:
    """An analytic p clipped to [``P_FLOOR``, 1] (nan stays nan)."""
    return p if not np.isfinite(p) else float(min(1.0, max(p, P_FLOOR)))


def format_p(p: float, perms: int = 0, name: str = "p") -> str:
    """``p=0.034``; at its floor ``p<1/1001`` (R = ``perms`` permutations) or ``p<2.2e-16``
    (an analytic p); empty for nan."""
    if p is None or not np.isfinite(p):
        return ""
    if perms and math.isclose(p, 1 / (perms + 1), rel_tol=1e-9):
        return f"{name}<1/{perms + 1}"
    if p <= P_FLOOR:
        return f"{name}<{P_FLOOR:.2g}"
    return f"{name}={p:.3g}"


PERM_INVERSION = "permutation inversion on Fisher z"


def permutation_interval(
    estimate: float, null: np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """Interval of a correlation by inverting its permutation test on the Fisher-z scale.

    With z = atanh(r) and a_(1) >= a_(2) >= ... the sorted |atanh r*| of the R permutation
    replicates, h = a_(c), c = floor((1 - level)(R + 1)), and CI = [tanh(z - h), tanh(z + h)]:
    it excludes 0 exactly when |t| > a_(c), i.e. when p_perm = (1 + #{|t*| >= |t|})/(1 + R)
    <= c/(R + 1) <= 1 - level, so the CI and p_perm never disagree; under the null it covers 0
    with probability ``level`` (the test is exact); under an effect it assumes atanh r spreads
    as under the null (Fisher's z is variance-stabilising). Always contains ``estimate``;
    (-1, 1) when R is too small (c = 0); (nan, nan) without a finite estimate or replicates."""
    t = np.asarray(null, dtype=np.float64)
    t = t[np.isfinite(t)]
    if not np.isfinite(estimate) or len(t) == 0:
        return float("nan"), float("nan")
    c = int(math.floor((1 - level) * (len(t) + 1) + 1e-9))
    if c < 1:
        return -1.0, 1.0
    lim = 1 - 1e-12
    a = np.sort(np.abs(np.arctanh(np.clip(t, -lim, lim))))[::-1]
    z = float(np.arctanh(np.clip(estimate, -lim, lim)))
    h = float(a[c - 1]) + 1e-12  # |t| > a_(c) excludes 0; ties at a_(c) stay inside
    lo, hi = float(np.tanh(z - h)), float(np.tanh(z + h))
    return min(lo, float(estimate)), max(hi, float(estimate))
