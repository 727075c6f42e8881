"""The verdict rule of the findings page, applied by code (``VERDICT_RULE`` states it in words).

Each claim has a direction in the paper (``direction`` = -1 for a negative relation, +1 for a
positive one). With a 95% CI [lo, hi] of the effect:

    supported      the CI excludes 0 on the paper's side  (hi < 0 for -1, lo > 0 for +1)
    contradicted   the CI excludes 0 on the other side
    inconclusive   otherwise ("at this N"), or "(no CI)" when a bound is not finite

Layer-wise rows count blocks (``block_verdict``): of the m second-half blocks, supported when
more than m/2 have a CI on the paper's side and none on the other, contradicted in the mirror
case, else inconclusive. "Emerges with training" rows (``emergence_verdict``) contrast the
trained model's layer-wise verdict T with that of the same architecture at a seeded random
initialisation R: supported when T is supported and R is not, contradicted when R is supported
too (the relation is there before training), else inconclusive. The kNN-LM key row
(``verdict``, direction +1) takes the CI of the paired difference in mean log-probability per
held-out token between the key dispersion picks and the best other key. For an undecided slope, ``n_to_decide`` gives the N at which its CI would
exclude 0 if the estimate held: the CI's reach h toward 0 shrinks as 1/sqrt(N), so
N' = N·(h/|slope|)² (``core.stats.n_to_decide``), rounded up.
"""

from __future__ import annotations

import math
from typing import Any

VERDICT_RULE = (
    "Verdict rule (applied by the code, not by hand): each claim has a direction in the paper. "
    "**supported** when this run's 95% CI excludes 0 on the paper's side, **contradicted** when "
    "it excludes 0 on the other side, otherwise **inconclusive at this N**. Layer-wise rows count "
    "blocks: supported when more than half of the second-half blocks have a CI on the paper's "
    "side and none on the other side, contradicted in the mirror case, else inconclusive. "
    "An 'emerges with training' row is supported when the trained model's layer-wise rule is "
    "met and the same architecture at a seeded random initialisation does not meet it, "
    "contradicted when the random initialisation meets it too, else inconclusive. "
    "For an inconclusive slope the row gives the N at which its CI would exclude 0 if the "
    "estimate held (the CI's reach h from the estimate toward 0 shrinks as 1/sqrt(N): "
    "N·(h/|slope|)²), a planning figure for a larger run."
)


def verdict(ci_low: float, ci_high: float, direction: int) -> str:
    """The stated rule: the CI excludes 0 on the paper's side / the other side / neither."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "inconclusive (no CI)"
    side = 1 if ci_low > 0 else -1 if ci_high < 0 else 0
    if side == 0:
        return "inconclusive at this N"
    return "supported" if side == direction else "contradicted"


def block_verdict(on_side: int, other_side: int, m: int) -> str:
    """Layer-wise rule over ``m`` blocks: ``on_side`` of them have a CI on the paper's side,
    ``other_side`` on the other side."""
    if m and on_side > m / 2 and other_side == 0:
        return "supported"
    if m and other_side > m / 2 and on_side == 0:
        return "contradicted"
    return "inconclusive at this N"


def emergence_verdict(trained: str, random_init: str) -> str:
    """The 'emerges with training' rule from two layer-wise verdicts (``block_verdict``)."""
    if random_init == "supported":
        return "contradicted"
    if trained == "supported":
        return "supported"
    return "inconclusive at this N"


def n_to_decide(n: int, e: dict[str, Any]) -> int | None:
    """Segments at which this slope's CI would exclude 0 if the estimate held (``core.stats``);
    None when it already does or cannot."""
    from ..core.stats import n_to_decide as n_needed

    if e["ci_low"] > 0 or e["ci_high"] < 0:
        return None
    m = n_needed(n, e["value"], e["ci_low"], e["ci_high"])
    return math.ceil(m) if math.isfinite(m) else None


def p_of(e: dict[str, Any]) -> float | None:
    """The estimate's permutation p-value, else its analytic one, else None."""
    for key in ("p_perm", "p_value"):
        p = e.get(key)
        if p is not None and math.isfinite(p):
            return float(p)
    return None
