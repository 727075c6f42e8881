"""Gap components of two row sets, for cosine distance (the paper's metric) and Euclidean distance:

within(T)       mean pairwise distance among the domain rows (i < j)
within(T')      the same among the reference rows
between(T, T')  mean distance over all pairs (t in T, t' in T')
G               within(T) + between(T, T')
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...core.errors import RepdispError
from ...core.geometry import CosineStats, dispersion, mean_euclidean

METRICS = ("cosine", "euclidean")


def cosine_between(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine distance over all pairs (a_i, b_j), O((n + m)·d): 1 - (Σû)·(Σv̂)/(n m)."""
    sa, sb = CosineStats().update(a), CosineStats().update(b)
    return 1.0 - float(sa.total @ sb.total) / (sa.count * sb.count)


def euclidean_between(a: np.ndarray, b: np.ndarray, block: int = 1024) -> float:
    """Exact mean Euclidean distance over all pairs (a_i, b_j), in blocks of rows."""
    total = 0.0
    sb = (b * b).sum(1)
    for i in range(0, len(a), block):
        x = a[i : i + block]
        d2 = (x * x).sum(1)[:, None] + sb[None, :] - 2.0 * x @ b.T
        total += float(np.sqrt(np.maximum(d2, 0.0)).sum())
    return total / (len(a) * len(b))


@dataclass
class GapComponents:
    within_domain: float
    within_reference: float
    between: float
    gap: float = field(init=False)

    def __post_init__(self) -> None:
        self.gap = self.within_domain + self.between


def gap_components(domain: np.ndarray, reference: np.ndarray, metric: str) -> GapComponents:
    if metric == "cosine":
        return GapComponents(
            dispersion(domain), dispersion(reference), cosine_between(domain, reference)
        )
    if metric == "euclidean":
        return GapComponents(
            mean_euclidean(domain), mean_euclidean(reference), euclidean_between(domain, reference)
        )
    raise RepdispError(f"unknown metric {metric!r}; choose {', '.join(METRICS)}")
