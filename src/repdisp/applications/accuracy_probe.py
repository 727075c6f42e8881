"""Dispersion as a label-free proxy for accuracy (§3.1): the controlled protocol of Fig. 8.

The pool of questions is split into the ones the model answers correctly and incorrectly. For
each accuracy level p (fraction correct), ``sample`` queries are drawn without replacement with
exactly round(p · sample) correct ones; the dispersion of their query embeddings is recorded,
over ``seeds`` seeds (seed s, level p always draw the same queries). The curve is the mean with
its standard error over seeds; its Spearman correlation with p is reported both over the level
means and over all (level, seed) points.

When a pool holds fewer than ``sample`` correct (or incorrect) queries, ``short="reduce"`` lowers
the sample size for every level to what both pools allow (the curve stays comparable across
levels), and ``short="skip"`` keeps the size and drops the levels that cannot be filled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.errors import RepdispError
from ..core.geometry import dispersion
from ..core.stats import Correlation, correlation
from .mcqa import MCResult

DEFAULT_LEVELS = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class LevelResult:
    level: float  # requested fraction correct
    n_correct: int
    n_incorrect: int
    mean: float
    sem: float
    values: list[float] = field(repr=False)


@dataclass
class ProbeResult:
    model: str
    task: str
    n_pool: int
    n_correct: int
    acc: float
    acc_norm: float
    correct_by: str
    site: str
    sample: int
    seeds: int
    levels: list[LevelResult]
    spearman_means: Correlation | None
    spearman_points: Correlation | None
    notes: list[str]

    def rows(self) -> list[dict]:
        return [
            {k: v for k, v in vars(lv).items() if k != "values"} | {"model": self.model}
            for lv in self.levels
        ]

    def table(self) -> str:
        lines = [
            f"{self.model} on {self.task}: pool {self.n_pool}, acc {self.acc:.4f}, acc_norm "
            f"{self.acc_norm:.4f} (protocol uses {self.correct_by}: {self.n_correct} correct)",
            f"sample {self.sample} queries x {self.seeds} seeds, site {self.site}",
            "fraction correct  dispersion  sem",
        ]
        lines += [f"{lv.level:16.2f}  {lv.mean:10.5f}  {lv.sem:.5f}" for lv in self.levels]
        for name, c in (("level means", self.spearman_means), ("all points", self.spearman_points)):
            if c is not None:
                lines.append(f"spearman ({name}): {c}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def sample_mix(
    correct_idx: np.ndarray, incorrect_idx: np.ndarray, level: float, sample: int, seed: int
) -> np.ndarray:
    """Indices of ``sample`` queries with exactly round(level · sample) correct ones, drawn
    without replacement; deterministic in (seed, level)."""
    n_c = int(round(level * sample))
    n_i = sample - n_c
    if n_c > len(correct_idx) or n_i > len(incorrect_idx):
        raise RepdispError(
            f"level {level:.2f} needs {n_c} correct and {n_i} incorrect queries; the pool has "
            f"{len(correct_idx)} and {len(incorrect_idx)}"
        )
    rng = np.random.default_rng([seed, int(round(level * 1000))])
    return np.concatenate(
        [
            rng.choice(correct_idx, n_c, replace=False),
            rng.choice(incorrect_idx, n_i, replace=False),
        ]
    ).astype(np.int64)


def run_protocol(
    embeddings: np.ndarray,
    correct: np.ndarray,
    levels: tuple[float, ...] = DEFAULT_LEVELS,
    sample: int = 100,
    seeds: int = 10,
    short: str = "reduce",
) -> tuple[list[LevelResult], int, list[str]]:
    """Dispersion per accuracy level over seeds; returns (levels, sample size used, notes)."""
    if short not in ("reduce", "skip"):
        raise RepdispError(f"unknown --on-short {short!r}; choose reduce or skip")
    correct = np.asarray(correct, dtype=bool)
    c_idx, i_idx = np.flatnonzero(correct), np.flatnonzero(~correct)
    notes = []
    need_c = max(int(round(lv * sample)) for lv in levels)
    need_i = max(sample - int(round(lv * sample)) for lv in levels)
    if short == "reduce" and (need_c > len(c_idx) or need_i > len(i_idx)):
        fits = [
            s
            for s in range(sample, 1, -1)
            if all(
                int(round(lv * s)) <= len(c_idx) and s - int(round(lv * s)) <= len(i_idx)
                for lv in levels
            )
        ]
        if not fits:
            raise RepdispError(
                f"the pool has {len(c_idx)} correct and {len(i_idx)} incorrect queries: too few "
                "for any sample size at these levels"
            )
        notes.append(
            f"pool has {len(c_idx)} correct / {len(i_idx)} incorrect queries: sample size "
            f"reduced from {sample} to {fits[0]} for every level"
        )
        sample = fits[0]
    out = []
    for lv in levels:
        n_c = int(round(lv * sample))
        if n_c > len(c_idx) or sample - n_c > len(i_idx):
            notes.append(f"level {lv:.2f} skipped: pool too small for {sample} queries")
            continue
        vals = [
            dispersion(embeddings[sample_mix(c_idx, i_idx, lv, sample, s)]) for s in range(seeds)
        ]
        sem = float(np.std(vals, ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else float("nan")
        out.append(LevelResult(float(lv), n_c, sample - n_c, float(np.mean(vals)), sem, vals))
    return out, sample, notes


def accuracy_probe(
    result: MCResult,
    *,
    model: str,
    task: str,
    levels: tuple[float, ...] = DEFAULT_LEVELS,
    sample: int = 100,
    seeds: int = 10,
    correct_by: str = "acc",
    short: str = "reduce",
) -> ProbeResult:
    """Run the protocol on scored questions (``repdisp.mcqa.score``); needs gold labels."""
    if not result.has_labels:
        raise RepdispError("the accuracy probe needs gold answers for every question")
    if correct_by not in ("acc", "acc_norm"):
        raise RepdispError(f"--correct-by must be acc or acc_norm, got {correct_by!r}")
    correct = result.correct if correct_by == "acc" else result.correct_norm
    lv, used, notes = run_protocol(result.embeddings, correct, levels, sample, seeds, short)
    x = [r.level for r in lv]
    sp_means = correlation(x, [r.mean for r in lv], "spearman") if len(lv) >= 3 else None
    pts_x = [r.level for r in lv for _ in r.values]
    pts_y = [v for r in lv for v in r.values]
    sp_pts = correlation(pts_x, pts_y, "spearman") if len(lv) >= 3 else None
    if sp_means is None:
        notes.append("fewer than 3 levels: no correlation")
    return ProbeResult(
        model,
        task,
        len(correct),
        int(correct.sum()),
        result.acc,
        result.acc_norm,
        correct_by,
        result.site,
        used,
        seeds,
        lv,
        sp_means,
        sp_pts,
        notes,
    )


def plot_probe(results: list[ProbeResult]):
    """Dispersion vs fraction correct, one line (mean ± sem) per result."""
    from ..io.results import new_figure

    fig, ax = new_figure(figsize=(5, 3.6))
    for r in results:
        x = [lv.level * 100 for lv in r.levels]
        ax.errorbar(
            x,
            [lv.mean for lv in r.levels],
            yerr=[lv.sem for lv in r.levels],
            marker="o",
            capsize=3,
            label=f"{r.model} ({r.task})",
        )
    ax.set_xlabel("fraction of correctly answered queries (%)")
    ax.set_ylabel("dispersion of query embeddings")
    ax.set_title(f"{results[0].sample} queries x {results[0].seeds} seeds, {results[0].site}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig
