"""The kNN distribution and its interpolation with the LM, in log space:

    p_kNN(y) ∝ Σ_{neighbours j with value y} exp(-‖q - k_j‖² / T)
    p(y)     = λ·p_kNN(y) + (1 - λ)·p_LM(y)

(logsumexp), so a target that no neighbour holds costs log(1 - λ) only.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from ...core.errors import RepdispError


def knn_log_prob(
    dist: np.ndarray, neighbour_values: np.ndarray, targets: np.ndarray, temperature: float
) -> np.ndarray:
    """log p_kNN(target) per query from (Q, k) squared distances and the neighbours' token ids.

    Softmax over -dist/T, summed over neighbours holding the target; -inf where none does.
    Missing neighbours (FAISS id -1, value < 0) get no weight."""
    logits = -np.asarray(dist, dtype=np.float64) / temperature
    logits = np.where(neighbour_values < 0, -np.inf, logits)
    hit = np.where(neighbour_values == np.asarray(targets)[:, None], logits, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        return logsumexp(hit, axis=1) - logsumexp(logits, axis=1)


def interpolate(log_p_knn: np.ndarray, log_p_lm: np.ndarray, lmbda: float) -> np.ndarray:
    """log(λ·p_kNN + (1-λ)·p_LM), stable for p_kNN = 0 and for λ in {0, 1}."""
    if not 0.0 <= lmbda <= 1.0:
        raise RepdispError(f"--lmbda must be in [0, 1], got {lmbda}")
    with np.errstate(divide="ignore"):
        return np.logaddexp(np.log(lmbda) + log_p_knn, np.log1p(-lmbda) + log_p_lm)


def perplexity(log_p: np.ndarray) -> float:
    return float(np.exp(-np.mean(log_p)))
