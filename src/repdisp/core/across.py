"""All draws of the across-segment statistics at once: one sparse product per site.

``core.stats.across_stats`` bins every draw (observed, bootstraps, permutations, jackknife) once
for all sites; each draw is a list of groups of rows of the unit vectors (a bin, a curve bin),
with multiplicities. Here the groups of every draw are stacked into ONE (groups x N) count
matrix W (scipy CSR, built once per cell, never per site), with per row n = Σ_k c_k and
q = Σ_k c_k². A site then costs one product S = W @ U (O(nnz·d), the only O(d) work), and the
per-group dispersion is ``geometry.weighted_dispersion``'s closed form

    D_g = 1 - (||S_g||² - q_g) / (n_g² - q_g)        (nan when n_g² = q_g),

row for row the same arithmetic as one product per draw. The four statistics of every draw
(Pearson and Spearman over the binner's K bins, Spearman and the per-doubling slope over the
curve) are then matrix operations over all draws with the same group counts (``draw_values``);
a draw with a group of copies of one segment (nan dispersion) or with other counts falls back to
the per-draw ``_plan_stats`` of ``core.stats``.

Contract: ``stack_draws(plans, n)`` -> ``Stacked``; ``Stacked.dispersions(units)`` -> the
(draws, groups) dispersions (nan rows for left-out draws); ``draw_values(D, plans, one)`` -> the
(draws, 4) statistics, ``one(d, plan)`` being the per-draw reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy import stats as sps

from .correlation import row_corr, row_slope
from .geometry import _row_dot


@dataclass
class Stacked:
    """Every draw's groups as rows of one count matrix (``offsets[j]``: draw j's first row)."""

    w: Any  # scipy CSR (total groups x N)
    n: np.ndarray  # Σ c per row
    sq: np.ndarray  # Σ c² per row
    offsets: np.ndarray  # (draws + 1,) row offsets; a left-out draw has no rows

    def dispersions(self, units: np.ndarray) -> np.ndarray:
        """Per-row dispersion for float64 unit vectors ``units`` (N, d): one sparse product."""
        sums = np.asarray(self.w @ units)
        norm2 = _row_dot(sums, sums)  # vecdot: one pass, no squared copy
        den = self.n * self.n - self.sq
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, 1 - (norm2 - self.sq) / np.where(den > 0, den, 1), np.nan)


def stack_draws(plans: list[Any], n: int) -> Stacked:
    """One CSR count matrix over the groups of every draw (None: a left-out draw, no rows)."""
    rows, cols, sizes, base = [], [], [], 0
    for p in plans:
        if p is None:
            sizes.append(0)
            continue
        rows.append(np.asarray(p.rows) + base)
        cols.append(np.asarray(p.cols))
        sizes.append(p.n_groups)
        base += p.n_groups
    r = np.concatenate(rows) if rows else np.empty(0, np.int64)
    c = np.concatenate(cols) if cols else np.empty(0, np.int64)
    w = sparse.csr_matrix((np.ones(len(c)), (r, c)), shape=(base, n))
    w.sum_duplicates()
    cnt = np.asarray(w.sum(axis=1)).ravel()
    sq = np.asarray(w.multiply(w).sum(axis=1)).ravel()
    return Stacked(w, cnt, sq, np.concatenate([[0], np.cumsum(sizes)]))


def draw_values(
    d_all: np.ndarray, plans: list[Any], offsets: np.ndarray, one: Callable[..., np.ndarray]
) -> np.ndarray:
    """(draws, 4) statistics of every draw from the stacked dispersions ``d_all``; draws whose
    groups all have a dispersion and whose counts match the most common ones go through
    matrix operations, the others through ``one(d, plan)``; left-out draws stay nan."""
    vals = np.full((len(plans), 4), np.nan)
    shapes: dict[tuple[int, int], list[int]] = {}
    for j, p in enumerate(plans):
        if p is not None:
            d = d_all[offsets[j] : offsets[j + 1]]
            if np.isfinite(d).all() and np.isfinite(p.means).all():
                shapes.setdefault((p.k, p.n_groups), []).append(j)
            else:
                vals[j] = one(d, p)
    for (k, g), idx in shapes.items():
        sel = np.asarray(idx)
        starts = offsets[sel]
        d = d_all[starts[:, None] + np.arange(g)]
        means = np.stack([plans[j].means for j in idx])
        if k > 2:
            x_k, y_k = means[:, :k], d[:, :k]
            vals[sel, 0] = row_corr(x_k, y_k)
            vals[sel, 1] = row_corr(sps.rankdata(x_k, axis=1), sps.rankdata(y_k, axis=1))
        if g - k > 2:
            x_c, y_c = np.log2(means[:, k:]), d[:, k:]
            vals[sel, 2] = row_corr(sps.rankdata(x_c, axis=1), sps.rankdata(y_c, axis=1))
            vals[sel, 3] = row_slope(x_c, y_c)
    return vals
