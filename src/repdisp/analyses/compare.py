"""Dispersion of several models on the same text (§2.2(3), Fig. 6): base vs fine-tuned, or families.

Segments are drawn with the same seed, count and length for every model. Models that share a
tokenizer (a base model and its fine-tunes) therefore see identical token segments; the result
says so (``identical_segments``) by comparing the segments' token-id fingerprints. Models with
different tokenizers see the same seeded selection of windows from their own token streams,
which covers the same source text in distribution but not window by window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..core.bootstrap import bootstrap_ci, bootstrap_weights
from ..core.errors import RepdispError
from ..core.geometry import (
    as_matrix,
    dispersion,
    unit_rows,
    weighted_dispersion,
)
from ..core.models import LoadedModel, load_model
from ..core.sampling import ModelLike, Sampling, loaded
from ..core.stats import mean_ci
from ..io.results import Result, new_figure, record, recorded
from .labels import model_label, short_name


@dataclass
class ModelDispersion:
    """One model's dispersion on the sampled segments, with 95% bootstrap CIs over segments."""

    model: str
    segments_fingerprint: str
    bos: bool
    mean_ppl: float
    across: float
    across_ci_low: float
    across_ci_high: float
    within: float
    within_ci_low: float
    within_ci_high: float
    # paired difference to the first model (this - first) with a 95% CI from resampling the same
    # segments for both; only when the segments are identical, else None
    across_diff: float | None = None
    across_diff_ci_low: float | None = None
    across_diff_ci_high: float | None = None
    within_diff: float | None = None
    within_diff_ci_low: float | None = None
    within_diff_ci_high: float | None = None


def paired_differences(
    a: np.ndarray, b: np.ndarray, wa: np.ndarray, wb: np.ndarray, reps: int, seed: int
) -> tuple[float, float, float, float, float, float]:
    """``b - a`` for the across dispersion (vectors ``a``, ``b`` of the same segments) and the
    mean within value (``wa``, ``wb``), each with a 95% CI from one shared segment resampling."""
    ua, ub = unit_rows(as_matrix(a)), unit_rows(as_matrix(b))
    n = len(ua)
    across, within = [], []
    for weights in bootstrap_weights(n, reps, seed):
        across.append(weighted_dispersion(ub, weights) - weighted_dispersion(ua, weights))
        within.append(weights @ (np.asarray(wb, float) - np.asarray(wa, float)) / n)
    (alo, ahi), (wlo, whi) = (
        np.quantile(np.concatenate(v), [0.025, 0.975]) for v in (across, within)
    )
    d_across = dispersion(b) - dispersion(a)
    d_within = float(np.mean(wb) - np.mean(wa))
    return d_across, float(alo), float(ahi), d_within, float(wlo), float(whi)


@dataclass
class CompareResult(Result):
    kind: ClassVar[str] = "compare"

    data: str
    n_segments: int
    seq_len: int
    seed: int
    site: str
    pooling: str
    skip_first: int
    identical_segments: bool
    models: list[ModelDispersion] = field(default_factory=list)
    seconds: float = 0.0

    def rows(self) -> list[dict[str, Any]]:
        return [vars(m) for m in self.models]

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"models": self.rows()}

    def figure(self) -> Any:
        return plot(self)

    def headline(self) -> dict[str, Any] | None:
        if len(self.models) < 2:
            return None
        m = self.models[-1]
        what = (
            f"across dispersion ({self.pooling} token, site {self.site}) of "
            f"{model_label(m.model)} minus {model_label(self.models[0].model)} on "
            f"{short_name(self.data)}, {self.n_segments} segments x {self.seq_len} tokens"
        )
        if m.across_diff is None:
            return {
                "what": what,
                "value": m.across - self.models[0].across,
                "ci": None,
                "answer": f"{m.across - self.models[0].across:+.4f} (different tokenizations: "
                "no paired CI)",
                "significant": None,
            }
        lo, hi = m.across_diff_ci_low, m.across_diff_ci_high
        return {
            "what": what + " (identical segments, paired bootstrap)",
            "value": m.across_diff,
            "ci": [lo, hi],
            "answer": f"{m.across_diff:+.4f} [95% CI {lo:+.4f}, {hi:+.4f}]",
            "significant": bool(lo > 0 or hi < 0),
        }

    def table(self) -> str:
        same = "identical" if self.identical_segments else "same seed, different tokenizations"
        lines = [
            f"{short_name(self.data)} | {self.n_segments} segments x {self.seq_len} tokens | seed "
            f"{self.seed} ({same}) | site {self.site} | {self.seconds:.1f} s",
            f"{'model':<28}{'mean ppl':>10}  {'across [95% CI]':<28}{'within [95% CI]'}",
        ]
        for m in self.models:
            lines.append(
                f"{model_label(m.model):<28}{m.mean_ppl:>10.3f}  "
                f"{f'{m.across:.4f} [{m.across_ci_low:.4f}, {m.across_ci_high:.4f}]':<28}"
                f"{m.within:.4f} [{m.within_ci_low:.4f}, {m.within_ci_high:.4f}]"
            )
            if m.across_diff is not None:
                lines.append(
                    f"{'  minus first model':<38}"
                    f"{f'{m.across_diff:+.4f} [{m.across_diff_ci_low:+.4f}, {m.across_diff_ci_high:+.4f}]':<28}"
                    f"{m.within_diff:+.4f} [{m.within_diff_ci_low:+.4f}, {m.within_diff_ci_high:+.4f}]"
                )
        return "\n".join(lines)


@recorded
def compare_models(
    models: Sequence[ModelLike],
    data: str,
    *,
    sampling: Sampling | None = None,
    pooling: str = "last",
    site: str = "final",
    bootstrap: int = 1000,
    load: Callable[[str], LoadedModel] = load_model,
) -> CompareResult:
    """Across- and within-segment dispersion of each model on the same seeded segments."""
    if len(models) < 2:
        raise RepdispError("compare needs at least 2 models (repeat --model)")
    if pooling not in ("last", "mean"):
        raise RepdispError(f"across pooling must be last or mean, got {pooling!r}")
    sampling = sampling or Sampling()
    start = time.perf_counter()
    rows, prints, first, seen = [], set(), None, []
    for spec in models:
        lm = loaded(spec, load)
        segs, ex = sampling.run(lm, data, site, [pooling, "within"])
        seen.append((lm, segs))
        x, w = ex.get(ex.sites[0], pooling), ex.get(ex.sites[0], "within")
        lo, hi = bootstrap_ci(x, bootstrap, sampling.seed)
        wlo, whi = mean_ci(w, bootstrap, sampling.seed)
        prints.add(segs.fingerprint)
        diffs = ()
        if first is None:
            first = (x, w)
        elif len(prints) == 1:
            diffs = paired_differences(first[0], x, first[1], w, bootstrap, sampling.seed)
        rows.append(
            ModelDispersion(
                lm.name,
                segs.fingerprint,
                segs.has_bos,
                float(np.mean(ex.seq_ppl)),
                dispersion(x),
                lo,
                hi,
                float(w.mean()),
                wlo,
                whi,
                *diffs,
            )
        )
    result = CompareResult(
        data,
        sampling.segments,
        sampling.seq_len,
        sampling.seed,
        site,
        pooling,
        sampling.skip_first,
        len(prints) == 1,
        rows,
        time.perf_counter() - start,
    )
    for lm, segs in seen:
        record(result, models=lm, data=segs, seed=sampling.seed)
    return result


def plot(result: CompareResult) -> Any:
    """Bars of across- and within-segment dispersion per model with 95% CI error bars."""
    names = [model_label(m.model) for m in result.models]
    x = np.arange(len(names))
    fig, axes = new_figure(1, 2, figsize=(max(8, 2.2 * len(names) + 4), 4.5))
    for ax, mode in zip(axes, ("across", "within"), strict=True):
        v = np.array([getattr(m, mode) for m in result.models])
        lo = np.array([getattr(m, f"{mode}_ci_low") for m in result.models])
        hi = np.array([getattr(m, f"{mode}_ci_high") for m in result.models])
        ax.bar(x, v, color=[f"C{i}" for i in range(len(v))])
        ax.vlines(x, lo, hi, color="k", lw=1.5)  # the CI (a bootstrap CI need not contain v)
        ax.set_xticks(x, names, rotation=15, fontsize=8)
        ax.set_ylabel(f"dispersion ({mode}), mean cosine distance")
        what = f"Eq. 1 over {result.pooling}-token vectors" if mode == "across" else "token-level"
        ax.set_title(f"{mode}: {what} @ {result.site}", fontsize=10)
        ax.set_ylim(0, max(hi) * 1.15)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"{short_name(result.data)}: {result.n_segments} segments x {result.seq_len} tokens, "
        f"95% bootstrap CIs"
    )
    fig.tight_layout()
    return fig
