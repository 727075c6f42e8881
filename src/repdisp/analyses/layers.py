"""Layer-wise perplexity vs dispersion (§2.2(2), Fig. 5): the same bins at every chosen site.

One extraction pass reads every site; segments are binned once by sequence perplexity
(Algorithm 1), and at each site the per-bin dispersions (``across`` and ``within``, as in
``repdisp.ppl_dispersion``) are correlated with the bin mean perplexity. Next to those, the
segment-level statistics of ``repdisp.ppl_dispersion`` at every site (every bootstrap or
permutation replicate re-bins once and is measured at all sites).

Under ``torchrun`` the processes share the extraction (``core.distributed``: shards split over
ranks, gathered to rank 0 in segment order); rank 0 alone computes the statistics, and every
process returns its result (broadcast), the same as one process's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..core import distributed
from ..core.corpus import Segments
from ..core.errors import RepdispError
from ..core.models import LoadedModel, load_model
from ..core.sampling import ModelLike, Sampling, loaded
from ..core.settings import Statistics
from ..core.stats import Correlation
from ..io.progress import StatusLine
from ..io.results import Result, new_figure, record, recorded
from .binning import (
    MODES,
    BinPoint,
    bin_points,
    correlate,
    segment_stats,
    select_bins,
    stat_estimates,
)


@dataclass
class LayerBins:
    """Per-bin dispersions at one site and their correlations with bin mean perplexity."""

    site: str
    bins: list[BinPoint]
    correlations: dict[str, dict[str, Correlation]]
    stats: dict[str, Any] = field(default_factory=dict)  # segment-level, as in ppl_dispersion


@dataclass
class LayersResult(Result):
    kind: ClassVar[str] = "layers"

    model: str
    data: str
    n_segments: int
    seq_len: int
    bin_size: int
    n_bins: int
    pooling: str
    skip_first: int
    seed: int
    layers: list[LayerBins] = field(default_factory=list)
    seconds: float = 0.0

    def bin_rows(self) -> list[dict[str, Any]]:
        return [{"site": layer.site, **vars(p)} for layer in self.layers for p in layer.bins]

    def correlation_rows(self) -> list[dict[str, Any]]:
        return [
            {"site": layer.site, "mode": mode} | c.to_dict()
            for layer in self.layers
            for mode, by_method in layer.correlations.items()
            for c in by_method.values()
        ]

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "bins": self.bin_rows(),
            "correlations": self.correlation_rows(),
            "stats": self.stats_rows(),
        }

    def figure(self) -> Any:
        return plot(self)

    def headline(self) -> dict[str, Any] | None:
        if not self.layers:
            return None
        best = max(self.layers, key=lambda lay: abs(lay.correlations["across"]["pearson"].r))
        c = best.correlations["across"]["pearson"]
        return {
            "what": f"site where bin mean perplexity correlates most with dispersion (across, "
            f"{self.pooling} token) for {self.model} on {self.data}: {len(self.layers)} sites, "
            f"{self.n_segments} segments x {self.seq_len} tokens, {self.n_bins} bins of "
            f"{self.bin_size}",
            "value": c.r,
            "ci": [c.ci_low, c.ci_high],
            "answer": f"{best.site}: Pearson r = {c.r:+.3f} [95% CI {c.ci_low:+.3f}, "
            f"{c.ci_high:+.3f}], p = {c.p_value:.2g}",
            "significant": bool(c.p_value < 0.05 and (c.ci_low > 0 or c.ci_high < 0)),
        }

    def stats_rows(self) -> list[dict[str, Any]]:
        """One row per (site, mode, segment-level statistic)."""
        return [
            {"site": layer.site, "mode": mode} | est
            for layer in self.layers
            for mode, st in layer.stats.items()
            for est in stat_estimates(st)
        ]

    def table(self) -> str:
        head = (
            f"{self.model} | {self.data} | {self.n_segments} segments x {self.seq_len} tokens | "
            f"{self.n_bins} bins of {self.bin_size} | {self.seconds:.1f} s\n"
            f"{'site':<10}{'mode':<8}{'pearson r [95% CI]':<28}{'spearman r [95% CI]'}"
        )
        rows = []
        for layer in self.layers:
            for mode in MODES:
                p, s = (layer.correlations[mode][m] for m in ("pearson", "spearman"))
                rows.append(
                    f"{layer.site:<10}{mode:<8}"
                    f"{f'{p.r:+.3f} [{p.ci_low:+.3f}, {p.ci_high:+.3f}]':<28}"
                    f"{s.r:+.3f} [{s.ci_low:+.3f}, {s.ci_high:+.3f}]"
                )
        text = head + "\n" + "\n".join(rows)
        if any(layer.stats for layer in self.layers):
            text += (
                "\nsegment-level (all N segments; 95% bootstrap CI over segments, "
                "permutation p)\n"
                f"{'site':<10}{'within spearman':<36}{'within slope/doubling':<38}"
                f"{'across pearson (re-binned)':<36}{'across slope/doubling (curve)'}"
            )
            for layer in self.layers:
                w, a = layer.stats["within"], layer.stats["across"]
                text += (
                    "\n"
                    + f"{layer.site:<10}"
                    + "".join(
                        f"{_est(e, f):<{width}}"
                        for e, f, width in (
                            (w["spearman"], "+.3f", 36),
                            (w["slope"], "+.4f", 38),
                            (a["pearson"], "+.3f", 36),
                            (a["slope"], "+.4f", 0),
                        )
                    )
                )
        return text


def _est(e: dict[str, Any], fmt: str) -> str:
    p = e["p_perm"] if np.isfinite(e["p_perm"]) else e["p_value"]
    return f"{e['value']:{fmt}} [{e['ci_low']:{fmt}}, {e['ci_high']:{fmt}}] p={p:.2g}"


@recorded
def layers(
    model: ModelLike,
    data: str,
    *,
    sites: str | list[str] = "all",
    sampling: Sampling | None = None,
    stats: Statistics | None = None,
    pooling: str = "last",
    load: Callable[[str], LoadedModel] = load_model,
    **binning: Any,
) -> LayersResult:
    """Dispersion per perplexity bin at each site, from one extraction pass; segment-level
    statistics with ``stats_reps`` bootstrap replicates and ``permutations`` (0, 0: none).

    ``stats``: the bins and resampling (``core.settings.Statistics``); its fields may also be
    given here as keywords (``bin_size=20, n_bins=5, bootstrap=...``), which replace those of
    ``stats``; without ``stats`` the seed is ``sampling.seed``."""
    if pooling not in ("last", "mean"):
        raise RepdispError(f"across pooling must be last or mean, got {pooling!r}")
    sampling = sampling or Sampling()
    stats = Statistics.build(stats, sampling.seed, **binning)
    start = time.perf_counter()
    lm = loaded(model, load)
    dist, created = distributed.setup(lm.device)  # under torchrun: one pass shared by all
    try:
        segs, ex = sampling.run(lm, data, sites, [pooling, "within"], dist=dist)
        result = None
        if dist.is_main:  # the whole extraction is here, in segment order
            line = StatusLine(f"statistics {lm.name} / {data}", enabled=sampling.progress)
            result = layers_from_extraction(
                lm.name, data, segs, ex, stats, pooling=pooling, skip_first=sampling.skip_first
            )
            line.close()
            record(result, models=lm, data=segs, seed=sampling.seed)
            result.seconds = time.perf_counter() - start
        return dist.broadcast(result, lm.device)
    finally:
        if created:
            distributed.teardown()


def layers_from_extraction(
    model: str,
    data: str,
    segs: Segments,
    ex: Any,
    stats: Statistics,
    *,
    pooling: str = "last",
    skip_first: int = 1,
    sites: list[str] | None = None,
) -> LayersResult:
    """The layer-wise result from a finished extraction over ``segs`` (every site in ``sites``,
    default all the extraction has): one Algorithm 1 binning by sequence perplexity for every
    site, bins and resampling as ``stats`` says."""
    sites = sites or ex.sites
    ppl = ex.seq_ppl
    sel = select_bins(ppl, stats.bin_size, stats.n_bins)
    seq_len = int(segs.ids.shape[1]) - int(segs.has_bos)
    result = LayersResult(
        model, data, len(segs), seq_len, stats.bin_size, stats.n_bins, pooling, skip_first,
        stats.seed,
    )  # fmt: skip
    per_site: list[dict[str, Any]] = [{} for _ in sites]
    if stats.stats_reps or stats.permutations:
        per_site = segment_stats(
            ppl,
            np.stack([ex.get(site, "within") for site in sites]),
            [ex.get(site, pooling) for site in sites],
            stats,
        )
    for site, st in zip(sites, per_site, strict=True):
        points = bin_points(ppl, ex.get(site, pooling), ex.get(site, "within"), sel)
        corr = correlate(points, stats.bootstrap, stats.seed, stats.level)
        result.layers.append(LayerBins(site, points, corr, st))
    return result


def plot(result: LayersResult) -> Any:
    """Left: across-segment dispersion of each bin along depth, coloured by bin perplexity.
    Right: Pearson r (95% bootstrap CI) of bin perplexity vs dispersion along depth, both modes."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FuncFormatter

    sites = [layer.site for layer in result.layers]
    x = list(range(len(sites)))
    means = [p.mean_ppl for p in result.layers[0].bins]
    norm = LogNorm(min(means), max(means))
    cmap = colormaps["viridis"]
    fig, (left, right) = new_figure(1, 2, figsize=(13, 4.8))
    for k, m in enumerate(means):
        left.plot(x, [layer.bins[k].across for layer in result.layers], lw=1.2, color=cmap(norm(m)))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=left)
    bar.set_label("bin mean perplexity")
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    bar.ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    left.set_ylabel(f"dispersion (across, {result.pooling} token)")
    left.set_title("dispersion per perplexity bin along depth", fontsize=10)
    for mode, colour in zip(MODES, ("C0", "C3"), strict=True):
        cs = [layer.correlations[mode]["pearson"] for layer in result.layers]
        right.plot(x, [c.r for c in cs], "o-", ms=3, color=colour, label=f"{mode}")
        right.fill_between(
            x, [c.ci_low for c in cs], [c.ci_high for c in cs], color=colour, alpha=0.15
        )
    right.axhline(0, color="grey", lw=0.8)
    right.set_ylim(-1.05, 1.05)
    right.set_ylabel("Pearson r (bin perplexity vs dispersion), 95% CI")
    right.set_title("correlation along depth", fontsize=10)
    right.legend(fontsize=8)
    step = max(1, len(sites) // 15)
    for ax in (left, right):
        ax.set_xticks(x[::step], sites[::step], rotation=45, fontsize=7)
        ax.set_xlabel("site (block output unless named)")
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{result.model} on {result.data.split('/')[-1]}: {result.n_segments} segments x "
        f"{result.seq_len} tokens, {result.n_bins} bins of {result.bin_size}"
    )
    fig.tight_layout()
    return fig
