"""Key selection: does the highest-dispersion site give the best kNN-LM perplexity?

The dispersion profile on the training text (``keys``), one datastore with every candidate site
(one forward pass), one evaluation pass, and the winner's margin with a bootstrap CI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...core.models import LoadedModel
from ...core.stats import mean_ci
from ...io.results import Result, record, recorded
from .datastore import BuildReport, Datastore, run_build_datastore
from .evaluation import KnnEval, plot_eval, run_evaluate_knnlm
from .keys import KeyProfile, profile_keys
from .settings import BuildSettings, EvalSettings, Profiling
from .windows import chunk_windows


@dataclass(kw_only=True)
class SelectReport(Result):
    kind: ClassVar[str] = "knnlm-select"
    run_keys: ClassVar[tuple[str, ...]] = (
        "profile.seconds",
        "evaluation.seconds",
        "evaluation.forward_seconds",
        "evaluation.search_seconds",
        "build.seconds",
        "build.forward_seconds",
        "build.write_seconds",
        "build.shards_computed",
        "build.shards_reused",
    )

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

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"sites": self.rows(), "profile": self.profile.csv_rows()}

    def figure(self) -> Any:
        return plot_eval(self.evaluation)

    def explain_nonfinite(self, key: str, value: float) -> str | None:
        return self.evaluation.explain_nonfinite(key, value)

    def headline(self) -> dict[str, Any] | None:
        ci = list(self.margin_ci) if self.margin_ci is not None else None
        answer = (
            f"{'yes' if self.picked_winner else 'no'}: highest dispersion at {self.recommended}, "
            f"best kNN-LM perplexity at {self.winner}"
        )
        if self.margin_nats is not None and ci is not None:
            answer += (
                f"; winner vs runner-up {self.margin_nats:+.4f} nats/target [95% CI "
                f"{ci[0]:+.4f}, {ci[1]:+.4f}]"
            )
        return {
            "what": f"does the highest-dispersion key site give the best kNN-LM? {self.model}, "
            f"{self.evaluation.n_targets} evaluation targets, {self.build.n_keys} keys",
            "value": self.margin_nats,
            "ci": ci,
            "answer": answer,
            "significant": None if ci is None else bool(ci[0] > 0 or ci[1] < 0),
        }

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


@recorded
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
    ``cache`` is the profile's extraction cache (see ``repdisp.extract``). The keywords become
    ``Profiling``, ``BuildSettings`` and ``EvalSettings`` for ``run_select_key``."""
    return run_select_key(
        lm,
        train,
        evaluation,
        folder,
        Profiling(
            sites=sites,
            chunks=chunks,
            seeds=seeds,
            chunk_len=chunk_len,
            train_source=train_source,
            eval_source=eval_source,
            cache=cache,
            progress=progress,
        ),
        BuildSettings(**(build_kwargs or {})),
        EvalSettings(**(eval_kwargs or {})),
    )


def run_select_key(
    lm: LoadedModel,
    train: np.ndarray,
    evaluation: np.ndarray,
    folder: str | Path,
    profiling: Profiling,
    build_settings: BuildSettings,
    eval_settings: EvalSettings,
) -> SelectReport:
    """``select_key`` on settings objects (the command calls this)."""
    progress, train_source = profiling.progress, profiling.train_source
    windows = chunk_windows(train, profiling.chunk_len, lm.bos_id, train_source)
    profile = profile_keys(
        lm, windows, chunks=[profiling.chunks], seeds=profiling.seeds, sites=profiling.sites,
        cache=profiling.cache, progress=progress,
    )  # fmt: skip
    build = run_build_datastore(
        lm, train, folder, build_settings, profile.sites, train_source, progress
    )
    result = run_evaluate_knnlm(
        lm, Datastore.open(folder), evaluation, eval_settings, None, profiling.eval_source,
        progress,
    )  # fmt: skip
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
    for part in (profile, result):  # what the two steps recorded: models and data
        record(
            report, models=part.provenance.get("models", []), data=part.provenance.get("data", [])
        )
    return record(report, datastore=str(folder))
