"""Layer-wise perplexity vs dispersion (§2.2(2), Fig. 5): the same bins at every chosen site.

One extraction pass reads every site; segments are binned once by sequence perplexity
(Algorithm 1), and at each site the per-bin dispersions (``across`` and ``within``, as in
``repdisp.ppl_dispersion``) are correlated with the bin mean perplexity.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import RepdispError
from ..core.models import LoadedModel, load_model
from ..core.sampling import ModelLike, Sampling, loaded
from ..core.stats import Correlation
from .binning import MODES, BinPoint, bin_points, correlate, select_bins


@dataclass
class LayerBins:
    """Per-bin dispersions at one site and their correlations with bin mean perplexity."""

    site: str
    bins: list[BinPoint]
    correlations: dict[str, dict[str, Correlation]]


@dataclass
class LayersResult:
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
        return head + "\n" + "\n".join(rows)


def layers(
    model: ModelLike,
    data: str,
    *,
    sites: str | list[str] = "all",
    sampling: Sampling | None = None,
    bin_size: int = 50,
    n_bins: int = 10,
    pooling: str = "last",
    bootstrap: int = 2000,
    load: Callable[[str], LoadedModel] = load_model,
) -> LayersResult:
    """Dispersion per perplexity bin at each site, from one extraction pass."""
    if pooling not in ("last", "mean"):
        raise RepdispError(f"across pooling must be last or mean, got {pooling!r}")
    sampling = sampling or Sampling()
    start = time.perf_counter()
    lm = loaded(model, load)
    segs, ex = sampling.run(lm, data, sites, [pooling, "within"])
    ppl = ex.seq_ppl
    sel = select_bins(ppl, bin_size, n_bins)
    result = LayersResult(
        lm.name,
        data,
        len(segs),
        sampling.seq_len,
        bin_size,
        n_bins,
        pooling,
        sampling.skip_first,
        sampling.seed,
    )
    for site in ex.sites:
        points = bin_points(ppl, ex.get(site, pooling), ex.get(site, "within"), sel)
        result.layers.append(LayerBins(site, points, correlate(points, bootstrap, sampling.seed)))
    result.seconds = time.perf_counter() - start
    return result


def plot(result: LayersResult) -> Any:
    """Left: across-segment dispersion of each bin along depth, coloured by bin perplexity.
    Right: Pearson r (95% bootstrap CI) of bin perplexity vs dispersion along depth, both modes."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FuncFormatter

    from ..io.results import new_figure

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
