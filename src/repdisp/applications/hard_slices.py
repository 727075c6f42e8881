"""Label-free hard slices (§3.1): queries in crowded regions of the embedding space.

Each query's score is its mean cosine distance to all other queries (O(N·d), via
``geometry.per_example_scores``). Lower dispersion goes with lower accuracy in the paper, so the
lowest-scoring tail is written out as the slice most likely to be answered wrongly. No labels are
needed for that; when gold answers exist, the AUROC of (−score) for separating wrong from right
answers says how much to trust it (0.5 = no signal, above 0.5 = the direction holds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.errors import RepdispError
from ..core.geometry import per_example_scores
from .mcqa import MCResult


@dataclass
class HardSlices:
    scores: np.ndarray = field(repr=False)  # per query, in input order
    order: np.ndarray = field(repr=False)  # query indices, lowest score first
    n_slice: int
    fraction: float
    auroc: float | None  # wrong vs right, score negated; None without labels
    error_rate_slice: float | None
    error_rate_all: float | None

    @property
    def slice_idx(self) -> np.ndarray:
        return self.order[: self.n_slice]


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting half.

    Rank form (Mann-Whitney U): with midranks r of all scores, n1 positives and n0 negatives,
    AUROC = (sum of positives' ranks - n1 (n1 + 1) / 2) / (n1 n0)."""
    from scipy.stats import rankdata

    positive = np.asarray(positive, dtype=bool)
    n1 = int(positive.sum())
    n0 = positive.size - n1
    if n1 == 0 or n0 == 0:
        raise RepdispError("AUROC needs both classes")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))  # ties get their mean rank
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auroc_wrong(scores: np.ndarray, wrong: np.ndarray) -> float:
    """AUROC of −score as a detector of wrong answers (ties count half)."""
    wrong = np.asarray(wrong, dtype=bool)
    if wrong.all() or not wrong.any():
        raise RepdispError("AUROC needs both right and wrong answers")
    return auroc(-np.asarray(scores, dtype=np.float64), wrong)


def hard_slices(result: MCResult, fraction: float = 0.2, correct_by: str = "acc") -> HardSlices:
    """Rank queries by score and keep the lowest ``fraction`` as the likely-wrong slice."""
    if not 0 < fraction <= 1:
        raise RepdispError(f"--fraction must be in (0, 1], got {fraction}")
    scores = per_example_scores(result.embeddings)
    order = np.argsort(scores, kind="stable")
    n_slice = max(1, int(round(fraction * len(scores))))
    auroc = err_slice = err_all = None
    if result.has_labels:
        wrong = ~(result.correct if correct_by == "acc" else result.correct_norm)
        err_all = float(wrong.mean())
        err_slice = float(wrong[order[:n_slice]].mean())
        if wrong.any() and not wrong.all():
            auroc = auroc_wrong(scores, wrong)
    return HardSlices(scores, order, n_slice, fraction, auroc, err_slice, err_all)


def slice_rows(result: MCResult, hs: HardSlices, correct_by: str = "acc") -> list[dict]:
    """One row per query of the slice, lowest score first."""
    pred = result.pred if correct_by == "acc" else result.pred_norm
    rows = []
    for rank, i in enumerate(hs.slice_idx):
        it = result.items[i]
        row = {
            "rank": rank,
            "id": it.id,
            "score": float(hs.scores[i]),
            "subject": it.subject,
            "question": it.question,
            "predicted": it.choices[pred[i]],
        }
        if it.answer >= 0:
            row |= {"gold": it.choices[it.answer], "correct": bool(pred[i] == it.answer)}
        rows.append(row)
    return rows
