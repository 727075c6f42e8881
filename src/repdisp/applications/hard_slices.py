"""Label-free hard slices (§3.1): queries in crowded regions of the embedding space.

Each query's score is its mean cosine distance to all other queries (O(N·d), via
``geometry.per_example_scores``). Lower dispersion goes with lower accuracy in the paper, so the
lowest-scoring tail is written out as the slice most likely to be answered wrongly. No labels are
needed for that; when gold answers exist, the AUROC of (−score) for separating wrong from right
answers says how much to trust it (0.5 = no signal, above 0.5 = the direction holds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..core.errors import RepdispError
from ..core.geometry import per_example_scores
from ..io.results import Result, new_figure, recorded
from .mcqa import MCResult


@dataclass
class HardSlices(Result):
    kind: ClassVar[str] = "hard-slices"

    scores: np.ndarray = field(repr=False)  # per query, in input order
    order: np.ndarray = field(repr=False)  # query indices, lowest score first
    n_slice: int
    fraction: float
    auroc: float | None  # wrong vs right, score negated; None without labels
    error_rate_slice: float | None
    error_rate_all: float | None
    model: str = ""
    correct_by: str = "acc"
    ids: list[str] = field(default_factory=list, repr=False)  # query ids, input order
    slice: list[dict[str, Any]] = field(default_factory=list, repr=False)  # ``slice_rows``

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        ids = self.ids or [str(i) for i in range(len(self.scores))]
        scores = [{"id": i, "score": float(s)} for i, s in zip(ids, self.scores, strict=True)]
        return {"slice": self.slice, "scores": scores}

    def table(self) -> str:
        lines = [f"{self.model}: {len(self.scores)} queries, slice = lowest {self.n_slice} scores"]
        if self.auroc is not None:
            lines.append(
                f"AUROC (low score -> wrong) {self.auroc:.4f}; error rate in slice "
                f"{self.error_rate_slice:.4f} vs overall {self.error_rate_all:.4f}"
            )
        return "\n".join(lines)

    def figure(self) -> Any:
        """Histogram of the scores, the slice shaded."""
        fig, ax = new_figure(figsize=(5, 3.4))
        cut = float(self.scores[self.slice_idx].max())
        ax.hist(self.scores, bins=40, color="C0", alpha=0.8)
        ax.axvspan(float(self.scores.min()), cut, color="C3", alpha=0.15, label="slice")
        ax.set_xlabel("score: mean cosine distance to the other queries")
        ax.set_ylabel("queries")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        return fig

    def headline(self) -> dict[str, Any] | None:
        if self.auroc is None:
            return None
        return {
            "what": f"how well a low dispersion score flags wrong answers: {self.model}, "
            f"{len(self.scores)} queries, slice = lowest {self.fraction:.0%}",
            "value": self.auroc,
            "ci": None,
            "answer": f"AUROC {self.auroc:.3f}; error rate {self.error_rate_slice:.3f} in the "
            f"slice vs {self.error_rate_all:.3f} overall",
            "significant": None,
        }

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


@recorded
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
    hs = HardSlices(scores, order, n_slice, fraction, auroc, err_slice, err_all)
    hs.model, hs.correct_by = getattr(result, "model", ""), correct_by
    hs.ids = [str(it.id) for it in result.items]
    hs.slice = slice_rows(result, hs, correct_by)
    return hs


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
