"""The statistics and result file of the Fig. 7 step (``reproduce/scratch_clusters.py``).

Apart from the step so that building the CLI parser (which registers every claim) imports no
numpy; the step imports this module when it runs.

Inputs, per seed s and kept checkpoint t (steps t_0 < ... < t_m): the K clusters' within values
w_k(s, t) = 1 - mean_{i in k} cos(x_i, c_k) (``core.geometry.cluster_distances``: c_k the mean of
the raw member vectors), their centroids c_k(s, t), and the B held-out blocks' mean next-token
NLL l_b(s, t). Statistics of one (s, t):

    within  W  = (1/K) Σ_k w_k                                   (§2.3, to the centroid)
    between Bt = mean over pairs k<k' of 1 - cos(c_k, c_k')      (§2.3, among centroids; Eq. 1)
    loss    L  = (1/B) Σ_b l_b                                   (held-out mean NLL, nats/token)

Each reported value is the mean over seeds of the statistic (per checkpoint) or of its
last-minus-first difference Δ = S(t_m) - S(t_0) (the trend). Intervals: 95% BCa
(``core.bootstrap.bca_interval``) from R resamples of the clusters (W, Bt) or of the held-out
blocks (L) as ``core.bootstrap.bootstrap_weights`` count rows c, the SAME rows for every seed and
checkpoint (paired). Replicates: W* = Σ c_k w_k / Σ c_k; Bt* = ``geometry.weighted_dispersion``
of the unit centroids (copies of one centroid never paired); L* = Σ c_b l_b / Σ c_b. Acceleration:
the exact delete-one jackknife over clusters (blocks): W_(i) = (Σ w - w_i)/(K-1),
Bt_(i) = 1 - (||S - u_i||² - (K-1))/((K-1)(K-2)) with u the unit centroids and S their sum.

Trend: Spearman ρ of the seed-mean statistic against the step over the m+1 checkpoints (a
description: with 5 checkpoints ρ takes few values), with the percentile interval of ρ over the
same cluster resamples; the verdict reads the BCa interval of Δ. When the first checkpoint is
step 0 (the initialisation) and there are 3+, ``after_init`` is Δ from the first trained
checkpoint t_1 to t_m, with its BCa interval (a description, not the verdict's contrast).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.bootstrap import bca_interval, bootstrap_weights, interval_method
from ..core.errors import RepdispError
from ..core.geometry import cluster_distances, unit_rows, weighted_dispersion
from ..io.results import Result, new_figure

STATS = ("within", "between", "loss")


def cluster_summary(x: Any, labels: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(w, C): the K clusters' within values and centroids (rows) of one checkpoint's vectors."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    if sorted(set(labels.tolist())) != list(range(k)):
        raise RepdispError(f"labels must cover clusters 0..{k - 1}")
    d = cluster_distances(x, labels)
    centroids = np.stack([x[labels == g].mean(axis=0) for g in range(k)])
    return np.asarray(d.within_per_cluster, dtype=np.float64), centroids


def _mean_parts(v: np.ndarray, rows: list[np.ndarray]) -> tuple[float, np.ndarray, np.ndarray]:
    n = len(v)
    reps = np.concatenate([(w @ v) / w.sum(axis=1) for w in rows])
    return float(v.mean()), reps, (v.sum() - v) / (n - 1)


def _dispersion_parts(
    c: np.ndarray, rows: list[np.ndarray]
) -> tuple[float, np.ndarray, np.ndarray]:
    u = unit_rows(np.asarray(c, dtype=np.float64))
    n = len(u)
    s = u.sum(axis=0)
    est = 1.0 - (float(s @ s) - n) / (n * (n - 1))
    reps = np.concatenate([weighted_dispersion(u, w) for w in rows])
    loo = s[None, :] - u
    jack = 1.0 - (np.einsum("ij,ij->i", loo, loo) - (n - 1)) / ((n - 1) * (n - 2))
    return est, reps, jack


def _interval(est: float, reps: np.ndarray, jack: np.ndarray, unit: str, r: int, n: int) -> dict:
    lo, hi = bca_interval(est, reps, jack)
    return {"value": est, "ci_low": lo, "ci_high": hi, "n": n, "reps": r,
            "method": interval_method(r, unit, 0)}  # fmt: skip


def analyse(
    steps: list[int],
    within: np.ndarray,
    centroids: np.ndarray,
    nll: np.ndarray,
    reps: int,
    seed: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-checkpoint estimates and the trends (module docstring).

    ``within`` (S, T, K), ``centroids`` (S, T, K, d), ``nll`` (S, T, B) for S seeds and the T
    checkpoints ``steps`` (ascending). Returns (checkpoint rows: step and, per statistic, value
    and BCa interval; trend rows: stat, Δ last minus first with its BCa interval, Spearman ρ
    with its percentile interval)."""
    within, centroids, nll = (np.asarray(a, dtype=np.float64) for a in (within, centroids, nll))
    s_n, t_n, k = within.shape
    if t_n < 2 or list(steps) != sorted(set(steps)) or len(steps) != t_n:
        raise RepdispError(f"fig7: need 2+ ascending checkpoint steps, got {list(steps)}")
    if k < 3:
        raise RepdispError(f"fig7: {k} clusters; the between-cluster CI needs at least 3")
    b = nll.shape[2]
    if b < 2:
        raise RepdispError(f"fig7: {b} held-out block(s); the loss CI needs at least 2")
    crow = list(bootstrap_weights(k, reps, seed))  # one resample of the clusters for everything
    brow = list(bootstrap_weights(b, reps, seed + 1))  # and one of the held-out blocks
    parts: dict[str, list[list[tuple[float, np.ndarray, np.ndarray]]]] = {
        "within": [[_mean_parts(within[s, t], crow) for t in range(t_n)] for s in range(s_n)],
        "between": [
            [_dispersion_parts(centroids[s, t], crow) for t in range(t_n)] for s in range(s_n)
        ],  # fmt: skip
        "loss": [[_mean_parts(nll[s, t], brow) for t in range(t_n)] for s in range(s_n)],
    }
    units = {"within": ("clusters", k), "between": ("clusters", k), "loss": ("held-out blocks", b)}

    def combo(stat: str, weights: dict[int, float]) -> tuple[float, np.ndarray, np.ndarray]:
        """Σ_t weight_t · (seed mean of the statistic at checkpoint t)."""
        est, rep, jack = 0.0, 0.0, 0.0
        for s in range(s_n):
            for t, a in weights.items():
                e, r, j = parts[stat][s][t]
                est, rep, jack = est + a * e / s_n, rep + a * r / s_n, jack + a * j / s_n
        return est, rep, jack

    rows = []
    for t, step in enumerate(steps):
        row: dict[str, Any] = {"step": int(step)}
        for stat in STATS:
            e = _interval(*combo(stat, {t: 1.0}), units[stat][0], reps, units[stat][1])
            row |= {
                stat: e["value"],
                f"{stat}_ci_low": e["ci_low"],
                f"{stat}_ci_high": e["ci_high"],
            }
        rows.append(row)
    trends = []
    x = np.asarray(steps, dtype=np.float64)
    for stat in STATS:
        e = _interval(*combo(stat, {0: -1.0, t_n - 1: 1.0}), units[stat][0], reps, units[stat][1])
        per_t = np.stack([combo(stat, {t: 1.0})[1] for t in range(t_n)], axis=1)  # (R, T)
        rho = spearman(np.array([r[stat] for r in rows]), x)
        rho_reps = np.array([spearman(v, x) for v in per_t])
        rho_reps = rho_reps[np.isfinite(rho_reps)]
        lo, hi = np.quantile(rho_reps, [0.025, 0.975]) if len(rho_reps) else (np.nan, np.nan)
        first, last = rows[0][stat], rows[-1][stat]
        trend = {"stat": stat, **e, "first": first, "last": last, "spearman": rho,
                 "spearman_ci_low": float(lo), "spearman_ci_high": float(hi)}  # fmt: skip
        if steps[0] == 0 and t_n >= 3:  # descriptive: from the first trained checkpoint on
            a = _interval(
                *combo(stat, {1: -1.0, t_n - 1: 1.0}), units[stat][0], reps, units[stat][1]
            )
            trend |= {"after_init": {k: a[k] for k in ("value", "ci_low", "ci_high")}}
        trends.append(trend)
    return rows, trends


def spearman(y: np.ndarray, x: np.ndarray) -> float:
    """Spearman ρ of y against x (average ranks for ties; nan when either is constant)."""
    from scipy.stats import rankdata

    ry, rx = rankdata(y), rankdata(x)
    ry, rx = ry - ry.mean(), rx - rx.mean()
    den = float(np.sqrt((ry * ry).sum() * (rx * rx).sum()))
    return float((ry * rx).sum() / den) if den > 0 else float("nan")


@dataclass
class ScratchClusters(Result):
    """Fig. 7: within/between-cluster distance and held-out loss across one training run's
    checkpoints (module docstring)."""

    kind: ClassVar[str] = "scratch-clusters"
    run_keys: ClassVar[tuple[str, ...]] = ("seconds", "train_seconds")

    recipe: str
    data: str
    seeds: list[int]
    steps: list[int]
    n_params: int
    site: str
    ngram: int
    min_count: int
    context: int
    per_cluster: int
    clusters_asked: int
    ngrams_found: int
    clusters_used: int
    contexts: int
    heldout_tokens: int
    heldout_blocks: int
    block_size: int
    reps: int
    checkpoints: list[dict[str, Any]]  # per step: within, between, loss with BCa intervals
    trends: list[dict[str, Any]]  # per statistic: Δ last minus first, BCa; Spearman ρ
    clusters: list[dict[str, Any]] = field(default_factory=list)  # n-gram text, count, used
    seconds: float = 0.0
    train_seconds: list[float] = field(default_factory=list)

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"checkpoints": self.checkpoints, "trends": self.trends, "ngrams": self.clusters}

    def headline(self) -> dict[str, Any] | None:
        t = {r["stat"]: r for r in self.trends}
        if not t:
            return None
        w, b, loss = t["within"], t["between"], t["loss"]
        return {
            "what": f"within- and between-cluster distance from step {self.steps[0]} to "
            f"{self.steps[-1]} of a from-scratch run ({self.clusters_used} clusters)",
            "value": w["value"],
            "ci": [w["ci_low"], w["ci_high"]],
            "answer": f"Δwithin {w['value']:+.4f}, Δbetween {b['value']:+.4f}, "
            f"Δloss {loss['value']:+.3f}",
            "significant": bool(w["ci_low"] > 0 or w["ci_high"] < 0),
        }

    def figure(self) -> Any:
        """Within and between distance (left axis) and held-out loss (right) against the step."""
        fig, ax = new_figure(figsize=(6, 3.6))
        x = np.arange(len(self.steps))
        for k, (key, mark, name) in enumerate(
            (("within", "o-", "within (to centroid)"), ("between", "s-", "between (centroids)"))
        ):
            y = np.array([r[key] for r in self.checkpoints])
            lo = np.array([r[f"{key}_ci_low"] for r in self.checkpoints])
            hi = np.array([r[f"{key}_ci_high"] for r in self.checkpoints])
            ax.plot(x, y, mark, color=f"C{k}", label=name)
            ax.vlines(x, lo, hi, color=f"C{k}", lw=1.5)
        ax.set_xticks(x, [str(s) for s in self.steps])
        ax.set(xlabel="training step", ylabel="mean cosine distance (95% BCa)")
        ax2 = ax.twinx()
        ax2.plot(x, [r["loss"] for r in self.checkpoints], "^--", color="C2", label="held-out loss")
        ax2.set_ylabel("held-out loss (nats/token)")
        ax.set_title(
            f"{self.clusters_used} clusters of {self.ngram}-gram contexts, {Path(self.data).name}"
        )
        ax.legend(loc="upper left", fontsize=8)
        ax2.legend(loc="upper right", fontsize=8)
        return fig
