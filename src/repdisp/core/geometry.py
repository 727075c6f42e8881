"""Exact representation-dispersion statistics in O(N·d), streaming and mergeable.

For unit vectors u_1..u_N the mean cosine distance over pairs i<j is

    D = 1 - (||Σ u_i||² - N) / (N (N - 1)),

so a running sum of unit vectors (kept in float64) and a count are sufficient statistics: they
stream over chunks, merge exactly across shards or processes, and never need an N×N matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from .errors import RepdispError

ArrayLike = Any  # numpy array, torch tensor, or nested sequence of shape (N, d)

_CHUNK_ROWS = 4096
_BLOCK_BYTES = 1 << 22  # float64 block of rows in CosineStats.update: 4 MiB, fits in L2/L3
# Row-wise dot products; np.vecdot (numpy >= 2) is several times faster than einsum.
_row_dot = getattr(np, "vecdot", None) or (lambda a, b: np.einsum("ij,ij->i", a, b))


def as_matrix(x: ArrayLike) -> np.ndarray:
    """Return ``x`` as a 2-D numpy array without copying when possible (torch tensors included)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise RepdispError(f"expected a 2-D array of shape (N, d), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _check_finite(chunk: np.ndarray) -> None:
    if not np.isfinite(chunk).all():
        bad = int((~np.isfinite(chunk).all(axis=1)).sum())
        raise RepdispError(
            f"{bad} vector(s) contain NaN or inf (e.g. fp16 overflow); refusing to average them in"
        )


def unit_rows(chunk: np.ndarray, zero: str = "error") -> np.ndarray:
    """Normalise rows to unit length in float64. Zero rows raise (``zero="error"``) or are dropped
    with a warning (``zero="drop"``)."""
    chunk = np.asarray(chunk, dtype=np.float64)
    _check_finite(chunk)
    norms = np.linalg.norm(chunk, axis=1)
    zero_rows = norms == 0
    if zero_rows.any():
        if zero == "error":
            raise RepdispError(
                f"{int(zero_rows.sum())} zero vector(s): cosine distance is undefined for them"
            )
        warnings.warn(f"dropping {int(zero_rows.sum())} zero vector(s)", stacklevel=3)
        chunk, norms = chunk[~zero_rows], norms[~zero_rows]
    return chunk / norms[:, None]


@dataclass
class CosineStats:
    """Sufficient statistics for cosine dispersion: the float64 sum of unit vectors and a count.

    Chunks stream in with ``update``; statistics of shards or processes combine exactly with
    ``merge``; ``dispersion`` applies the closed form to the sums.

    Parameters
    ----------
    total : ndarray of shape (d,), optional
        Sum of the unit vectors seen so far (None before the first update).
    count : int
        Number of vectors seen so far.
    zero : {"error", "drop"}
        What to do with zero vectors (cosine undefined): raise, or drop them with a warning.

    Examples
    --------
    >>> import numpy as np
    >>> from repdisp import CosineStats
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> stats = CosineStats().update(X[:2]).update(X[2:])
    >>> stats.count, round(stats.dispersion, 4)
    (3, 1.3333)
    >>> round(CosineStats().update(X[:1]).merge(CosineStats().update(X[1:])).dispersion, 4)
    1.3333
    """

    total: np.ndarray | None = None
    count: int = 0
    zero: str = "error"

    def update(self, x: ArrayLike) -> CosineStats:
        """Add a chunk of vectors (N, d); returns self so calls chain.

        Speed: rows are copied to float64 in blocks small enough to stay in cache, and the sum
        of unit vectors is the product (1/||x_i||) @ block, so no normalised copy is made."""
        x = as_matrix(x)
        rows = max(1, _BLOCK_BYTES // (8 * max(1, x.shape[1])))
        buf = np.empty((min(rows, len(x)), x.shape[1]))
        with threadpool_limits(1, user_api="blas"):  # tiny gemvs: threads cost more than they give
            self._add_blocks(x, buf, rows)
        return self

    def _add_blocks(self, x: np.ndarray, buf: np.ndarray, rows: int) -> None:
        for start in range(0, len(x), rows):
            block = buf[: min(rows, len(x) - start)]
            block[...] = x[start : start + rows]
            sq = _row_dot(block, block)
            if np.isfinite(sq).all() and sq.all():
                s, k = (1.0 / np.sqrt(sq)) @ block, len(block)
            else:  # NaN/inf or zero rows: raise, or drop zeros with a warning
                u = unit_rows(block, self.zero)
                s, k = u.sum(axis=0), len(u)
            self.total = s if self.total is None else self.total + s
            self.count += k

    def merge(self, other: CosineStats) -> CosineStats:
        """Combine with statistics from another shard or process (exact)."""
        if other.total is None:
            return self
        self.total = other.total.copy() if self.total is None else self.total + other.total
        self.count += other.count
        return self

    @property
    def dispersion(self) -> float:
        """Mean over pairs i<j of 1 - cos(x_i, x_j)."""
        n = self.count
        if n < 2 or self.total is None:
            raise RepdispError(f"dispersion needs at least 2 vectors, got {n}")
        sq = float(self.total @ self.total)
        return 1.0 - (sq - n) / (n * (n - 1))

    def to_dict(self) -> dict[str, Any]:
        return {"total": None if self.total is None else self.total.tolist(), "count": self.count}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CosineStats:
        total = None if d["total"] is None else np.asarray(d["total"], dtype=np.float64)
        return cls(total=total, count=int(d["count"]))


def dispersion(x: ArrayLike, zero: str = "error") -> float:
    """Average pairwise cosine distance among the rows of ``x`` (Eq. 1 of the paper), exact, O(N·d).

    Parameters
    ----------
    x : array_like of shape (N, d)
        Numpy array, torch tensor or nested sequence; N >= 2.
    zero : {"error", "drop"}
        Zero vectors raise ``RepdispError`` or are dropped with a warning.

    Returns
    -------
    float
        Mean over pairs i < j of 1 - cos(x_i, x_j), computed in float64.

    Examples
    --------
    >>> import numpy as np
    >>> from repdisp import dispersion
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> round(dispersion(X), 4)  # pairs: 1 - 0, 1 - (-1), 1 - 0
    1.3333
    >>> dispersion(X[:1])
    Traceback (most recent call last):
    ...
    repdisp.core.errors.RepdispError: dispersion needs at least 2 vectors, got 1
    """
    return CosineStats(zero=zero).update(x).dispersion


def weighted_dispersion(units: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Dispersion of multisets given by integer weight rows (B, N) over unit vectors (N, d).

    Used for bootstrap resamples: each resample is a count vector, so its sum of unit vectors is
    ``weights @ units`` and its dispersion follows from the same closed form."""
    s = weights.astype(np.float64) @ units
    n = weights.sum(axis=1).astype(np.float64)
    return 1.0 - ((s * s).sum(axis=1) - n) / (n * (n - 1))


def bootstrap_weights(n: int, reps: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``reps`` bootstrap resamples of ``n`` items as count rows (b, n), in blocks of at most
    2·10⁶ counts; one seeded stream, so the rows do not depend on the block size. With
    ``weighted_dispersion`` each row gives one resample's dispersion; paired statistics use the
    same rows for both sides."""
    rng = np.random.default_rng(seed)
    block = max(1, min(reps, 2_000_000 // n))
    for start in range(0, reps, block):
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=min(block, reps - start))


def bootstrap_ci(
    x: ArrayLike, reps: int = 1000, seed: int = 0, level: float = 0.95, zero: str = "error"
) -> tuple[float, float]:
    """Percentile bootstrap CI of the dispersion, resampling vectors with replacement.

    Parameters
    ----------
    x : array_like of shape (N, d)
    reps : int
        Number of resamples.
    seed : int
        Seed of the resampling (``bootstrap_weights``).
    level : float
        Coverage of the interval.
    zero : {"error", "drop"}

    Returns
    -------
    (float, float)
        Lower and upper percentile of the resampled dispersions.

    Examples
    --------
    >>> import numpy as np
    >>> from repdisp import bootstrap_ci, dispersion
    >>> X = np.random.default_rng(0).normal(size=(50, 8))
    >>> lo, hi = bootstrap_ci(X, reps=200, seed=0)
    >>> bool(lo < dispersion(X) < hi)
    True
    """
    units = unit_rows(as_matrix(x), zero)
    n = len(units)
    if n < 2:
        raise RepdispError(f"dispersion needs at least 2 vectors, got {n}")
    values = [weighted_dispersion(units, w) for w in bootstrap_weights(n, reps, seed)]
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(np.concatenate(values), [alpha, 1 - alpha])
    return float(lo), float(hi)


def per_example_scores(x: ArrayLike, zero: str = "error") -> np.ndarray:
    """Each vector's mean cosine distance to all the others, O(N·d): 1 - (u_i·S - 1)/(N - 1).

    Parameters
    ----------
    x : array_like of shape (N, d)
    zero : {"error", "drop"}

    Returns
    -------
    ndarray of shape (N,)

    Examples
    --------
    >>> import numpy as np
    >>> from repdisp import per_example_scores
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> per_example_scores(X).round(4).tolist()
    [1.5, 1.0, 1.5]
    """
    units = unit_rows(as_matrix(x), zero)
    n = len(units)
    if n < 2:
        raise RepdispError(f"per-example scores need at least 2 vectors, got {n}")
    return 1.0 - (units @ units.sum(axis=0) - 1.0) / (n - 1)


def mean_sq_euclidean(x: ArrayLike) -> float:
    """Mean squared Euclidean distance over pairs i<j via the closed form
    2 (N Σ||x||² - ||Σx||²) / (N (N-1)), in float64.

    Parameters
    ----------
    x : array_like of shape (N, d)

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from repdisp import mean_sq_euclidean
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> round(mean_sq_euclidean(X), 4)  # (2 + 4 + 2) / 3
    2.6667
    """
    x = as_matrix(x)
    n = len(x)
    if n < 2:
        raise RepdispError(f"pairwise distances need at least 2 vectors, got {n}")
    sq, total = 0.0, np.zeros(x.shape[1])
    for start in range(0, n, _CHUNK_ROWS):
        c = np.asarray(x[start : start + _CHUNK_ROWS], dtype=np.float64)
        _check_finite(c)
        sq += float((c * c).sum())
        total += c.sum(axis=0)
    return 2.0 * (n * sq - float(total @ total)) / (n * (n - 1))


def mean_euclidean(x: ArrayLike, block: int = 1024) -> float:
    """Exact mean Euclidean distance over pairs i<j, computed in blocks: memory O(block²).

    Parameters
    ----------
    x : array_like of shape (N, d)
    block : int
        Rows per block of the pairwise kernel.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from repdisp import mean_euclidean
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> round(mean_euclidean(X), 4)  # (√2 + 2 + √2) / 3
    1.6095
    """
    x = np.asarray(as_matrix(x), dtype=np.float64)
    _check_finite(x)
    n = len(x)
    if n < 2:
        raise RepdispError(f"pairwise distances need at least 2 vectors, got {n}")
    sq = (x * x).sum(axis=1)
    total = 0.0
    for i in range(0, n, block):
        xi, si = x[i : i + block], sq[i : i + block]
        for j in range(i, n, block):
            total += _distance_sum(xi, si, x[j : j + block], sq[j : j + block], upper=i == j)
    return total / (n * (n - 1) / 2)


def mean_euclidean_between(a: ArrayLike, b: ArrayLike, block: int = 1024) -> float:
    """Exact mean Euclidean distance over all pairs (a_i, b_j), in blocks of rows of ``a``."""
    a = np.asarray(as_matrix(a), dtype=np.float64)
    b = np.asarray(as_matrix(b), dtype=np.float64)
    sb = (b * b).sum(1)
    total = 0.0
    for i in range(0, len(a), block):
        x = a[i : i + block]
        total += _distance_sum(x, (x * x).sum(1), b, sb)
    return total / (len(a) * len(b))


def _distance_sum(
    x: np.ndarray, sx: np.ndarray, y: np.ndarray, sy: np.ndarray, upper: bool = False
) -> float:
    """Σ ‖x_i - y_j‖ over a block of pairs from squared norms and one gemm (strictly upper
    triangle only when ``upper``: x and y are the same rows)."""
    d = np.sqrt(np.maximum(sx[:, None] + sy[None, :] - 2.0 * x @ y.T, 0.0))
    return float((np.triu(d, k=1) if upper else d).sum())


@dataclass
class ClusterDistances:
    """Within-cluster (to centroid) and between-cluster (among centroids) cosine distances."""

    within: float
    between: float
    within_per_cluster: np.ndarray = field(repr=False)


def cluster_distances(x: ArrayLike, labels: ArrayLike, zero: str = "error") -> ClusterDistances:
    """Within = mean over clusters of the mean cosine distance of members to their centroid;
    between = mean pairwise cosine distance among the centroids (centroids of the raw vectors).

    Parameters
    ----------
    x : array_like of shape (N, d)
    labels : array_like of shape (N,)
        Cluster label of each vector; at least 2 clusters.
    zero : {"error", "drop"}

    Returns
    -------
    ClusterDistances
        ``within``, ``between`` and ``within_per_cluster``.

    Examples
    --------
    >>> import numpy as np
    >>> from repdisp import cluster_distances
    >>> X = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> r = cluster_distances(X, [0, 0, 1, 1])
    >>> round(r.within, 4), round(r.between, 4)
    (0.0012, 0.9002)
    """
    x = np.asarray(as_matrix(x), dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) != len(x):
        raise RepdispError(f"{len(labels)} labels for {len(x)} vectors")
    units = unit_rows(x, zero)
    groups = np.unique(labels)
    if len(groups) < 2:
        raise RepdispError(f"between-cluster distance needs at least 2 clusters, got {len(groups)}")
    centroids = np.stack([x[labels == g].mean(axis=0) for g in groups])
    cu = unit_rows(centroids, "error")
    within = np.array(
        [1.0 - float((units[labels == g] @ cu[k]).mean()) for k, g in enumerate(groups)]
    )
    return ClusterDistances(float(within.mean()), dispersion(centroids), within)
