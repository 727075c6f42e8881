"""Dependencies: AUROC without scikit-learn (hand examples, brute force over all pairs,
Mann-Whitney U) and FAISS as an optional extra."""

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


def test_missing_faiss_is_one_clear_line(monkeypatch):
    """FAISS is the optional `repdisp[knnlm]` extra: without it, one line saying how to get it."""
    import builtins

    from repdisp.applications.knnlm.index import _faiss

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(RepdispError, match=r"repdisp\[knnlm\]") as e:
        _faiss()
    assert "\n" not in str(e.value)


def test_pyproject_extras():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    names = [d.split(">")[0].split("=")[0].split("[")[0].strip() for d in meta["dependencies"]]
    assert "scikit-learn" not in names and "faiss-cpu" not in names
    assert any(d.startswith("faiss-cpu") for d in meta["optional-dependencies"]["knnlm"])
    assert "datasets" in meta["optional-dependencies"]
