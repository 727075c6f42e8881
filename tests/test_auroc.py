"""AUROC without scikit-learn: hand examples, brute force over all pairs, Mann-Whitney U."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from repdisp.applications.hard_slices import auroc, auroc_wrong
from repdisp.core.errors import RepdispError


def brute_force(scores, positive) -> float:
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_hand_examples():
    # pairs (pos, neg): (.35,.1) win, (.35,.4) loss, (.8,.1) win, (.8,.4) win -> 3/4
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # a tie counts half: (1,1) half, (2,1) win -> 1.5/2
    assert auroc(np.array([1.0, 1.0, 2.0]), np.array([0, 1, 1])) == 0.75
    assert auroc(np.array([1.0, 2.0]), np.array([0, 1])) == 1.0
    assert auroc(np.array([2.0, 1.0]), np.array([0, 1])) == 0.0
    assert auroc(np.array([3.0, 3.0, 3.0]), np.array([1, 0, 0])) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_brute_force_and_mann_whitney_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 200).astype(float)  # many ties
    positive = rng.random(200) < 0.3
    got = auroc(scores, positive)
    assert got == pytest.approx(brute_force(scores, positive), abs=1e-12)
    u = mannwhitneyu(scores[positive], scores[~positive]).statistic
    assert got == pytest.approx(u / (positive.sum() * (~positive).sum()), abs=1e-12)


def test_auroc_wrong_negates_scores_and_needs_both_classes():
    scores = np.array([0.2, 0.9, 0.1, 0.7])
    wrong = np.array([True, False, True, False])  # low score -> wrong: a perfect detector
    assert auroc_wrong(scores, wrong) == 1.0
    with pytest.raises(RepdispError):
        auroc_wrong(scores, np.ones(4, bool))
