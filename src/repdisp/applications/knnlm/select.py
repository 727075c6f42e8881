"""Key selection: does the highest-dispersion site give the best kNN-LM perplexity?

The dispersion profile on the training text (``keys``), one datastore with every candidate site
(one forward pass), one evaluation pass, and the winner's margin with a bootstrap CI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...core.models import LoadedModel
from ...core.stats import mean_ci
from .datastore import BuildReport, Datastore, build_datastore
from .evaluation import KnnEval, evaluate_knnlm
from .keys import KeyProfile, profile_keys
from .windows import chunk_windows


@dataclass(kw_only=True)
class SelectReport:
    model: str
    recommended: str  # highest dispersion at the largest N
    winner: str  # lowest kNN-LM perplexity (best over the λ × T grid)
    picked_winner: bool
    profile: KeyProfile
    evaluation: KnnEval
    build: BuildReport
    # winner minus runner-up: mean log p per target (nats) and its 95% bootstrap CI over targets
    margin_nats: float | None = None
    margin_ci: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "evaluation"}
        return {**out, "evaluation": self.evaluation.to_dict()}

    def rows(self) -> list[dict[str, Any]]:
        n = self.profile.chunks[-1]
        return [
            {
                "site": s.site,
                "dispersion": self.profile.row(s.site, n).mean,
                "dispersion_std": self.profile.row(s.site, n).std,
                "base_ppl": self.evaluation.base_ppl,
                "knn_ppl": s.knn_ppl,
                "best_ppl": s.best_ppl,
                "best_lmbda": s.best_lmbda,
                "best_temperature": s.best_temperature,
                "recommended": s.site == self.recommended,
                "winner": s.site == self.winner,
            }
            for s in self.evaluation.sites
        ]

    def table(self) -> str:
        ev = self.evaluation
        lines = [
            f"model {self.model} | datastore {self.build.n_keys} keys | eval {ev.n_targets} targets | "
            f"k={ev.k} λ={ev.lmbda} T={ev.temperature} | dispersion over N={self.profile.chunks[-1]} "
            f"chunks × {self.profile.seeds} seeds",
            f"{'site':<10}{'dispersion':>16}{'base ppl':>10}{'kNN-LM ppl':>12}{'best ppl':>10}  best λ, T",
        ]
        for r in self.rows():
            mark = (" <- highest dispersion" if r["recommended"] else "") + (
                " <- best kNN-LM" if r["winner"] else ""
            )
            lines.append(
                f"{r['site']:<10}{r['dispersion']:>9.4f}±{r['dispersion_std']:.4f}{r['base_ppl']:>10.3f}"
                f"{r['knn_ppl']:>12.3f}{r['best_ppl']:>10.3f}  {r['best_lmbda']:g}, {r['best_temperature']:g}{mark}"
            )
        lines.append(
            f"control, LM + datastore unigram (no retrieval): {ev.unigram_ppl:.3f} at λ={ev.unigram_lmbda:g}"
        )
        verdict = "yes" if self.picked_winner else "no"
        lines.append(f"highest-dispersion site gave the best kNN-LM perplexity: {verdict}")
        if self.margin_ci is not None:
            lines.append(
                f"winner vs runner-up: {self.margin_nats:+.4f} nats/target, 95% bootstrap CI "
                f"[{self.margin_ci[0]:+.4f}, {self.margin_ci[1]:+.4f}] (targets resampled; λ, T tuned on them)"
            )
        return "\n".join(lines)


def select_key(
    lm: LoadedModel,
    train: np.ndarray,
    evaluation: np.ndarray,
    folder: str | Path,
    *,
    sites: str = "final-block",
    chunks: int = 100,
    seeds: int = 5,
    chunk_len: int = 256,
    train_source: str = "",
    eval_source: str = "",
    build_kwargs: dict[str, Any] | None = None,
    eval_kwargs: dict[str, Any] | None = None,
    cache: bool | str | Path = True,
    progress: bool = True,
) -> SelectReport:
    """Dispersion profile on the training text, one datastore with every candidate site (one
    forward pass), one evaluation pass, and whether the highest-dispersion site won.
    ``cache`` is the profile's extraction cache (see ``repdisp.extract``)."""
    windows = chunk_windows(train, chunk_len, lm.bos_id, train_source)
    profile = profile_keys(
        lm, windows, chunks=[chunks], seeds=seeds, sites=sites, cache=cache, progress=progress
    )
    build = build_datastore(
        lm,
        train,
        folder,
        sites=profile.sites,
        source=train_source,
        progress=progress,
        **(build_kwargs or {}),
    )
    result = evaluate_knnlm(
        lm,
        Datastore.open(folder),
        evaluation,
        source=eval_source,
        progress=progress,
        **(eval_kwargs or {}),
    )
    ranked = sorted(result.sites, key=lambda s: s.best_ppl)
    winner = ranked[0].site
    report = SelectReport(
        model=lm.name,
        recommended=profile.recommended,
        winner=winner,
        picked_winner=winner == profile.recommended,
        profile=profile,
        evaluation=result,
        build=build,
    )
    if len(ranked) > 1:
        diff = result.log_p[winner] - result.log_p[ranked[1].site]
        report.margin_nats, report.margin_ci = float(diff.mean()), mean_ci(diff, 2000, 0)
    return report
