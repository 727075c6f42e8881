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
from ...core.geometry import CosineStats, dispersion, mean_euclidean, mean_euclidean_between

METRICS = ("cosine", "euclidean")


def cosine_between(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine distance over all pairs (a_i, b_j), O((n + m)·d): 1 - (Σû)·(Σv̂)/(n m)."""
    sa, sb = CosineStats().update(a), CosineStats().update(b)
    return 1.0 - float(sa.total @ sb.total) / (sa.count * sb.count)


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
            mean_euclidean(domain),
            mean_euclidean(reference),
            mean_euclidean_between(domain, reference),
        )
    raise RepdispError(f"unknown metric {metric!r}; choose {', '.join(METRICS)}")
