"""Perplexity vs dispersion (§2.2(1), Fig. 3/4): bin segments by perplexity, measure each bin.

Segments are binned with Algorithm 1 (``repdisp.binning``). Per selected bin, two dispersions:

    across   Eq. 1 over the bin's segment vectors (one vector per segment: the last token by
             default, or the mean of its tokens) - what the paper's text describes;
    within   the mean, over the bin's segments, of the pairwise cosine distance among the tokens
             inside each segment - what the authors' released analysis code computes.

The correlation of bin mean perplexity with each dispersion is reported as Pearson and Spearman
with bootstrap CIs over bins (the paper's numbers). Next to them, statistics that use every
segment (``repdisp.core.stats``): for ``within`` the Spearman rho of per-segment dispersion with
perplexity over all N segments; for ``across`` the K-bin correlations with CIs from resampling
segments (re-binned with Algorithm 1 in every replicate) and permutation p-values, plus a
many-bins curve (``curve_bins`` equal-count bins); and for both the effect size, dispersion per
doubling of perplexity (OLS slope on log2 perplexity), with a bootstrap CI. Last-token mode (Fig. 4) bins by the perplexity of the segment's
last token instead, once per context length. Perplexity and every vector come from one
extraction pass per (model, data, length).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..core.corpus import Segments
from ..core.errors import RepdispError
from ..core.models import LoadedModel, load_model
from ..core.sampling import ModelLike, Sampling, loaded
from ..core.segment_table import segment_rows
from ..core.settings import SeriesReading, Statistics
from ..core.stats import Correlation
from ..io.progress import StatusLine
from ..io.results import Result, new_figure, record, recorded, segment_field
from .binning import (
    MODES,
    BinPoint,
    BinSelection,
    bin_points,
    correlate,
    segment_stats,
    select_bins,
    stat_estimates,
    stats_lines,
)
from .labels import model_label, short_name


@dataclass
class Series:
    """Bins and correlations of one model on one data source at one segment length."""

    model: str
    data: str
    perplexity: str  # "sequence" (whole segment) or "last-token"
    seq_len: int
    n_segments: int
    bin_size: int
    n_bins: int
    bos: bool
    bins: list[BinPoint]
    correlations: dict[str, dict[str, Correlation]]
    stats: dict[str, Any] = field(default_factory=dict)  # segment-level: see segment_stats

    def key(self) -> dict[str, Any]:
        """The columns that name this series in every table row."""
        return {
            "model": self.model,
            "data": self.data,
            "perplexity": self.perplexity,
            "seq_len": self.seq_len,
        }

    @property
    def label(self) -> str:
        ctx = f" ctx {self.seq_len}" if self.perplexity == "last-token" else ""
        return f"{model_label(self.model)} · {short_name(self.data)}{ctx}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Series:
        d = dict(d)
        d["bins"] = [BinPoint(**b) for b in d["bins"]]
        d["correlations"] = {
            mode: {m: Correlation(**c) for m, c in by_method.items()}
            for mode, by_method in d["correlations"].items()
        }
        return cls(**d)


@dataclass
class PplDispersionResult(Result):
    kind: ClassVar[str] = "ppl-vs-dispersion"

    pooling: str
    site: str
    skip_first: int
    seed: int
    series: list[Series] = field(default_factory=list)
    seconds: float = 0.0
    # one row per segment and series (``per_segment=True``; ``segments()``): NAME_segments.parquet
    per_segment_rows: list[dict[str, Any]] | None = segment_field()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PplDispersionResult:
        return cls(**(d | {"series": [Series.from_dict(s) for s in d["series"]]}))

    def bin_rows(self) -> list[dict[str, Any]]:
        return [
            s.key() | {"n_segments": s.n_segments} | vars(p) for s in self.series for p in s.bins
        ]

    def correlation_rows(self) -> list[dict[str, Any]]:
        return [
            s.key() | {"mode": mode} | c.to_dict()
            for s in self.series
            for mode, by_method in s.correlations.items()
            for c in by_method.values()
        ]

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "bins": self.bin_rows(),
            "correlations": self.correlation_rows(),
            "stats": self.stats_rows(),
            "curve": self.curve_rows(),
        }

    def figure(self) -> Any:
        return plot(self)

    def headline(self) -> dict[str, Any] | None:
        if not self.series:
            return None
        s = self.series[0]
        c = s.correlations["across"]["pearson"]
        sig = bool(c.p_value < 0.05 and (c.ci_low > 0 or c.ci_high < 0))
        more = (
            f" (first of {len(self.series)} series; all in the tables)"
            if len(self.series) > 1
            else ""
        )
        return {
            "what": f"correlation of bin mean {s.perplexity} perplexity with dispersion (across, "
            f"{self.pooling} token, site {self.site}): {s.label}, {s.n_segments} segments x "
            f"{s.seq_len} tokens, {s.n_bins} bins of {s.bin_size}{more}",
            "value": c.r,
            "ci": [c.ci_low, c.ci_high],
            "answer": f"Pearson r = {c.r:+.3f} [95% CI {c.ci_low:+.3f}, {c.ci_high:+.3f}], "
            f"p = {c.p_value:.2g}, n = {c.n} bins",
            "significant": sig,
        }

    def stats_rows(self) -> list[dict[str, Any]]:
        """One row per (series, mode, segment-level statistic)."""
        return [
            s.key() | {"mode": mode} | est
            for s in self.series
            for mode, st in s.stats.items()
            for est in stat_estimates(st)
        ]

    def curve_rows(self) -> list[dict[str, Any]]:
        """The many-bins curve of every series (across mode)."""
        return [
            s.key() | {"bin": k} | c
            for s in self.series
            if "across" in s.stats
            for k, c in enumerate(s.stats["across"]["curve"])
        ]

    def table(self) -> str:
        lines = [
            f"site {self.site} | across pooling {self.pooling} | skip first {self.skip_first} | "
            f"{self.seconds:.1f} s"
        ]
        for s in self.series:
            lines.append(
                f"{s.label}  ({s.n_segments} segments x {s.seq_len} tokens, "
                f"{s.n_bins} bins of {s.bin_size})"
            )
            for mode, by_method in s.correlations.items():
                lines += [f"  {mode:<7}{c}  (over {s.n_bins} bins)" for c in by_method.values()]
            lines += stats_lines(s.stats)
        return "\n".join(lines)


@recorded
def ppl_vs_dispersion(
    models: Sequence[ModelLike],
    datas: Sequence[str],
    *,
    sampling: Sampling | None = None,
    stats: Statistics | None = None,
    pooling: str = "last",
    site: str = "final",
    last_token: bool = False,
    contexts: Sequence[int] = (16, 64, 128, 256),
    load: Callable[[str], LoadedModel] = load_model,
    per_segment: bool = False,
    **binning: Any,
) -> PplDispersionResult:
    """Bin each (model, data) by perplexity and correlate bin perplexity with dispersion.

    ``stats``: the bins and resampling (``core.settings.Statistics``: ``bin_size``, ``n_bins``,
    ``bootstrap``, ``stats_reps``, ``permutations``, ``curve_bins``, ``seed``, ``level``); its
    fields may also be given here as keywords (``bin_size=20, n_bins=5``), which replace those of
    ``stats``; without ``stats`` the seed is ``sampling.seed``. ``stats_reps`` bootstrap
    replicates and ``permutations`` for the segment-level statistics (0 and 0: none).
    ``last_token``: bin by the last token's perplexity, once per length in ``contexts``
    (otherwise by sequence perplexity at ``sampling.seq_len``). ``per_segment``: keep one row
    per segment and series (``result.segments()``), with the bin it was selected into."""
    return run_ppl_vs_dispersion(
        models,
        datas,
        SeriesReading(
            site=site,
            pooling=pooling,
            last_token=last_token,
            contexts=contexts,
            per_segment=per_segment,
        ),
        sampling,
        Statistics.build(stats, (sampling or Sampling()).seed, **binning),
        load,
    )


def run_ppl_vs_dispersion(
    models: Sequence[ModelLike],
    datas: Sequence[str],
    reading: SeriesReading,
    sampling: Sampling | None = None,
    stats: Statistics | None = None,
    load: Callable[[str], LoadedModel] = load_model,
) -> PplDispersionResult:
    """``ppl_vs_dispersion`` on settings objects (the command calls this; see there)."""
    sampling = sampling or Sampling()
    stats = stats or Statistics(seed=sampling.seed)
    site, pooling, last_token = reading.site, reading.pooling, reading.last_token
    contexts, per_segment = reading.contexts, reading.per_segment
    start = time.perf_counter()
    result = PplDispersionResult(pooling, site, sampling.skip_first, sampling.seed)
    docs = {d: sampling.texts(d) for d in datas}
    rows: list[dict[str, Any]] = []
    for spec in models:
        lm = loaded(spec, load)
        record(result, models=lm, seed=sampling.seed)
        for data in datas:
            for length in contexts if last_token else [sampling.seq_len]:
                segs, ex = sampling.run(lm, data, site, [pooling, "within"], docs[data], length)
                record(result, data=segs)
                if per_segment:
                    rows += _segment_rows(lm.name, data, segs, ex, stats, pooling, last_token)
                line = StatusLine(f"statistics {lm.name} / {data} / {length}",
                                  enabled=sampling.progress)  # fmt: skip
                result.series.append(
                    series_from_extraction(
                        lm.name, data, segs, ex, stats,
                        site=ex.sites[0], pooling=pooling, last_token=last_token,
                    )  # fmt: skip
                )
                line.close()
    result.seconds = time.perf_counter() - start
    if per_segment:
        result.per_segment_rows = rows
    return result


def _segment_rows(
    model: str,
    data: str,
    segs: Segments,
    ex: Any,
    stats: Statistics,
    pooling: str,
    last_token: bool,
) -> list[dict[str, Any]]:
    """One row per segment of one series, with the selected bin it fell in (None: no bin)."""
    ppl = ex.last_ppl if last_token else ex.seq_ppl
    chosen = _bin_of(select_bins(ppl, stats.bin_size, stats.n_bins))
    rows = []
    for row in segment_rows(ex, segs, pooling):
        row = {"model": model, "data": data, "seq_len": _seq_len(segs)} | row
        row["bin"] = chosen.get(row["segment"])
        rows.append(row)
    return rows


def _seq_len(segs: Segments) -> int:
    """Tokens per segment, BOS not counted."""
    return int(segs.ids.shape[1]) - int(segs.has_bos)


def _bin_of(sel: BinSelection) -> dict[int, int]:
    """Segment index -> the selected bin it belongs to (segments in no selected bin: absent)."""
    return {int(j): int(b) for b, m in zip(sel.chosen, sel.members, strict=True) for j in m}


def series_from_extraction(
    model: str,
    data: str,
    segs: Segments,
    ex: Any,
    stats: Statistics,
    *,
    site: str = "final",
    pooling: str = "last",
    last_token: bool = False,
) -> Series:
    """One series from a finished extraction over ``segs`` (perplexities, ``site/pooling``
    vectors and ``site/within``): Algorithm 1 bins, binned correlations, segment-level
    statistics, all as ``stats`` says. The series' length and BOS flag are those of ``segs``."""
    ppl = ex.last_ppl if last_token else ex.seq_ppl
    sel = select_bins(ppl, stats.bin_size, stats.n_bins)
    vec, within = ex.get(site, pooling), ex.get(site, "within")
    points = bin_points(ppl, vec, within, sel)
    seg_stats = {}
    if stats.stats_reps or stats.permutations:
        seg_stats = segment_stats(ppl, within[None], [vec], stats)[0]
    return Series(
        model,
        data,
        "last-token" if last_token else "sequence",
        _seq_len(segs),
        len(segs),
        stats.bin_size,
        stats.n_bins,
        segs.has_bos,
        points,
        correlate(points, stats.bootstrap, stats.seed, stats.level),
        seg_stats,
    )


def merge(results: Sequence[PplDispersionResult]) -> PplDispersionResult:
    """The series of several results (same site, pooling and skip) as one, to plot together."""
    first = results[0]
    for r in results[1:]:
        if (r.site, r.pooling, r.skip_first) != (first.site, first.pooling, first.skip_first):
            raise RepdispError(
                f"cannot merge results at different site/pooling/skip-first: "
                f"{(first.site, first.pooling, first.skip_first)} vs {(r.site, r.pooling, r.skip_first)}"
            )
    return PplDispersionResult(
        first.pooling,
        first.site,
        first.skip_first,
        first.seed,
        [s for r in results for s in r.series],
        sum(r.seconds for r in results),
    )


def _log_label(v: float, _: Any = None) -> str:
    """Tick label on a log axis: 1, 2, 3 and 5 times powers of ten, others blank."""
    lead = round(v / 10 ** np.floor(np.log10(v))) if v > 0 else 0
    return f"{v:g}" if lead in (1, 2, 3, 5) else ""


def fit_band(
    x: Sequence[float], y: Sequence[float], grid: np.ndarray, reps: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares line y = a + b·log10(x) on ``grid`` and its pointwise 95% percentile
    bootstrap band (bins resampled with replacement; resamples with a single distinct x are
    dropped)."""
    lx, y = np.log10(np.asarray(x, float)), np.asarray(y, float)
    lg = np.log10(grid)
    b, a = np.polyfit(lx, y, 1)
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(reps):
        i = rng.integers(0, len(lx), len(lx))
        if np.ptp(lx[i]) > 0:
            bb, aa = np.polyfit(lx[i], y[i], 1)
            lines.append(aa + bb * lg)
    lo, hi = np.quantile(np.array(lines), [0.025, 0.975], axis=0) if lines else (lg * np.nan,) * 2
    return a + b * lg, lo, hi


def plot(result: PplDispersionResult) -> Any:
    """The paper's figure: per (model, data, length) one point per selected bin (bin mean
    perplexity on a log x axis, the bin's dispersion on y), the least-squares line in log
    perplexity and its 95% bootstrap band; one panel per dispersion mode, Pearson r in the legend.
    Colour by data, length and perplexity kind (sequence or last-token), marker by model."""
    from matplotlib.ticker import FuncFormatter

    fig, axes = new_figure(1, 2, figsize=(12, 5.2))
    models = list(dict.fromkeys(s.model for s in result.series))  # marker per model
    # colour per (data, length, perplexity kind): a sequence series and a last-token one of the
    # same data and length must not look alike
    keys = list(dict.fromkeys((s.data, s.seq_len, s.perplexity) for s in result.series))
    kinds = {s.perplexity for s in result.series}
    kind = "last-token " if kinds == {"last-token"} else ""
    xlabel = f"bin mean {kind}perplexity (log scale; exp of mean NLL in nats per token)"
    if len(kinds) > 1:
        xlabel += "\nsequence perplexity, or the last token's for the 'ctx' series"
    titles = {
        "across": f"across segments: Eq. 1 over {result.pooling}-token vectors",
        "within": "within segments: mean token-level dispersion",
    }
    for ax, mode in zip(axes, MODES, strict=True):
        for s in result.series:
            x = np.array([p.mean_ppl for p in s.bins])
            y = np.array([getattr(p, mode) for p in s.bins])
            c = s.correlations[mode]["pearson"]
            k = models.index(s.model)
            colour = f"C{keys.index((s.data, s.seq_len, s.perplexity)) % 10}"
            ax.plot(
                x, y, "os^vD"[k % 5], color=colour, ms=5, ls="none",
                label=f"{s.label}: r={c.r:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}]",
            )  # fmt: skip
            if len(x) >= 3 and np.ptp(np.log10(x)) > 0:
                grid = np.geomspace(x.min(), x.max(), 50)
                line, lo, hi = fit_band(x, y, grid, seed=result.seed)
                ax.plot(grid, line, color=colour, lw=1.2, ls=("-", "--", ":", "-.")[k % 4])
                ax.fill_between(grid, lo, hi, color=colour, alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_log_label))
        lo, hi = ax.get_xlim()  # over many decades, label only the powers of ten
        ax.xaxis.set_minor_formatter(FuncFormatter(_log_label if hi / lo < 300 else lambda *_: ""))
        ax.tick_params(axis="x", which="both", labelsize=8)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(f"dispersion ({mode}): mean cosine distance, 1 - cos", fontsize=9)
        ax.set_title(f"{titles[mode]} @ {result.site}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    sizes = {(s.n_segments, s.n_bins, s.bin_size) for s in result.series}
    what = (
        "{} segments, {} bins of {}".format(*sizes.pop())
        if len(sizes) == 1
        else "segments and bins per series in the table"
    )
    fig.suptitle(
        f"Perplexity vs dispersion (Algorithm 1 bins): {what}; "
        "line: least squares in log perplexity, band: 95% bootstrap over bins",
        fontsize=10,
    )
    fig.tight_layout()
    return fig
