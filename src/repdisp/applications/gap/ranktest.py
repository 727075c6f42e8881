"""Spearman's rank correlation over a handful of checkpoints, with its exact permutation test.

With k points (k = 3..8 checkpoints) neither an asymptotic p-value (t or normal approximation)
nor a bootstrap over the k points means anything: a bootstrap resample of 4 points holds ties
and repeats, and its percentile interval is not a 95% interval. What is exact is the null
distribution of ρ when the pairing of x with y is random: all k! orderings of y's ranks
equally likely.

    ρ          Pearson correlation of the average ranks of x and of y (ties share a rank)
    p          two-sided exact permutation p: the share of the k! orderings π with
               |ρ(x, y∘π)| >= |ρ_obs|; the observed ordering and its mirror always count, so
               without ties p >= 2/k! (the floor: 1/12 at k = 4, 1/60 at k = 5, 1/360 at k = 6)
    p_paper    one-sided: the share with ρ(x, y∘π) >= ρ_obs (ρ <= ρ_obs for direction -1)
    null band  the 2.5% and 97.5% points of ρ over the k! orderings: the range a ρ falls in
               under no relation, 95% of the time

For k > 8 the orderings are sampled (``draws`` seeded uniform permutations, p = (1 + hits) /
(1 + draws)), and the method says so. ``rank_verdict`` states the rule for such rows: the
row's direction in the paper is +1 or -1; supported when p <= 0.05 and ρ has the paper's sign,
contradicted when p <= 0.05 and ρ has the other sign, else inconclusive at this k (a test at
the 5% level, the same as a 95% CI excluding 0 on one side). When the floor of p is above 0.05
(k <= 4) no ordering can decide, and the verdict says that instead.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from ...core.errors import RepdispError

EXACT_MAX = 8
_EPS = 1e-12


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; ties share the mean of their positions)."""
    order = np.argsort(v, kind="mergesort")
    r = np.empty(len(v))
    r[order] = np.arange(1, len(v) + 1, dtype=np.float64)
    for val in np.unique(v):
        tie = v == val
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of ``a`` (k,) with every row of ``b`` (m, k)."""
    a = a - a.mean()
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a @ a) * np.einsum("ij,ij->i", b, b))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (b @ a) / np.where(den > 0, den, 1.0), 0.0)


def spearman_exact(
    x: list[float], y: list[float], direction: int = 1, *, draws: int = 100_000, seed: int = 0
) -> dict[str, Any]:
    """ρ(x, y), its two-sided and paper-side permutation p and the null band (module doc)."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    k = len(xa)
    if k != len(ya) or k < 3:
        raise RepdispError(f"rank correlation needs 3+ paired values, got {k} and {len(ya)}")
    if direction not in (1, -1):
        raise RepdispError(f"direction must be +1 or -1, got {direction!r}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise RepdispError("rank correlation of values that are not finite")
    rx, ry = _ranks(xa), _ranks(ya)
    obs = float(_pearson(rx, ry[None, :])[0])
    if k <= EXACT_MAX:
        perms = np.array(list(itertools.permutations(range(k))), dtype=np.int64)
        null = _pearson(rx, ry[perms])
        method = f"exact permutation over all {k}! = {len(perms)} orderings"
        count = len(null)
        p_two = float(np.mean(np.abs(null) >= abs(obs) - _EPS))
        p_side = float(np.mean(direction * null >= direction * obs - _EPS))
        floor = float(np.mean(np.abs(null) >= np.abs(null).max() - _EPS))
    else:
        rng = np.random.default_rng(seed)
        perms = np.argsort(rng.random((draws, k)), axis=1)
        null = _pearson(rx, ry[perms])
        method = f"{draws} seeded random orderings (k = {k} > {EXACT_MAX}), p = (1+hits)/(1+draws)"
        count = draws
        p_two = float((1 + np.sum(np.abs(null) >= abs(obs) - _EPS)) / (1 + draws))
        p_side = float((1 + np.sum(direction * null >= direction * obs - _EPS)) / (1 + draws))
        floor = 2.0 / math.factorial(k) if k < 20 else 0.0
    lo, hi = (float(q) for q in np.quantile(null, [0.025, 0.975]))
    return {
        "value": obs,
        "p_value": p_two,
        "p_paper": p_side,
        "null_low": lo,
        "null_high": hi,
        "p_floor": floor,
        "n": k,
        "orderings": count,
        "method": method,
    }


def rank_verdict(test: dict[str, Any], direction: int = 1, alpha: float = 0.05) -> str:
    """The rule of the module docstring on a ``spearman_exact`` result."""
    if test["p_floor"] > alpha:
        return (
            f"inconclusive at this k (k = {test['n']}: the exact p cannot go below "
            f"{test['p_floor']:.3g} > {alpha:g}; k >= 5 can decide)"
        )
    if test["p_value"] <= alpha and test["value"] != 0:
        return "supported" if math.copysign(1, test["value"]) == direction else "contradicted"
    return "inconclusive at this k"
