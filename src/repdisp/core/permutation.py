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
