"""Which sub-layer to use as the kNN-LM key: the dispersion profile of Table 1 (§3.3).

Per seed, N non-overlapping chunks are drawn (a seeded permutation of all chunk windows, of which
the first N are taken, so the same chunks serve every site); each chunk's last-token vector is read
at every candidate site and the dispersion (mean pairwise cosine distance) of the N vectors is
taken. All chunks of all seeds go through ONE extraction pass. The recommended key is the site
with the highest mean dispersion at the largest N: spread-out keys separate contexts better.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...core.corpus import Segments
from ...core.errors import RepdispError
from ...core.extract import extract
from ...core.geometry import dispersion
from ...core.models import LoadedModel
from ...io.results import Result, new_figure, record, recorded

SITE_SETS = {"final-block": "-1.attn,-1.ffn", "all": "all.attn,all"}


@dataclass(kw_only=True)
class KeyRow:
    """Dispersion at one site for N chunks: mean and std over seeds (and the per-seed values)."""

    site: str
    n_chunks: int
    mean: float
    std: float
    values: list[float]


@dataclass(kw_only=True)
class KeyProfile(Result):
    kind: ClassVar[str] = "knn-keys"

    model: str
    data: str
    chunk_len: int
    n_windows: int
    seeds: int
    chunks: list[int]
    sites: list[str]
    n_extracted: int
    recommended: str
    rows: list[KeyRow] = field(default_factory=list)
    seconds: float = 0.0

    def csv_rows(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in asdict(r).items() if k != "values"} for r in self.rows]

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"profile": self.csv_rows()}

    def figure(self) -> Any:
        return plot_profile(self)

    def headline(self) -> dict[str, Any] | None:
        n = self.chunks[-1]
        best = self.row(self.recommended, n)
        return {
            "what": f"the kNN-LM key site with the most spread-out keys: {self.model} on "
            f"{self.data}, N = {n} chunks of {self.chunk_len} tokens, {self.seeds} seeds",
            "value": best.mean,
            "ci": None,
            "answer": f"{self.recommended}: dispersion {best.mean:.4f} ± {best.std:.4f} (std over "
            "seeds); "
            + ", ".join(
                f"{s} {self.row(s, n).mean:.4f}" for s in self.sites if s != self.recommended
            ),
            "significant": None,
        }

    def row(self, site: str, n: int) -> KeyRow:
        return next(r for r in self.rows if r.site == site and r.n_chunks == n)

    def table(self) -> str:
        """Table 1 layout: one line per site, one column per N (mean ± std over seeds)."""
        head = (
            f"model {self.model} | data {self.data} | chunks of {self.chunk_len} tokens "
            f"({self.n_windows} available, {self.n_extracted} extracted) | {self.seeds} seeds | "
            f"{self.seconds:.1f} s\n"
        )
        lines = [f"{'site':<10}" + "".join(f"{'N=' + str(n):>20}" for n in self.chunks)]
        for s in self.sites:
            cells = "".join(
                f"{f'{self.row(s, n).mean:.4f} ± {self.row(s, n).std:.4f}':>20}"
                for n in self.chunks
            )
            lines.append(
                f"{s:<10}{cells}" + ("   <- recommended key" if s == self.recommended else "")
            )
        return head + "\n".join(lines)


def key_rows(
    vectors: dict[str, np.ndarray], draws: Any, chunks: list[int]
) -> tuple[list[KeyRow], str]:
    """One ``KeyRow`` per (site, N): the dispersion of rows ``draw[:N]`` of the site's vectors for
    each seed's draw; and the recommended site (highest mean at the largest N)."""
    rows = []
    for site, x in vectors.items():
        for n in chunks:
            vals = [dispersion(x[d[:n]]) for d in draws]
            rows.append(
                KeyRow(
                    site=site,
                    n_chunks=n,
                    mean=float(np.mean(vals)),
                    std=float(np.std(vals)),
                    values=vals,
                )
            )
    top = {r.site: r.mean for r in rows if r.n_chunks == chunks[-1]}
    return rows, max(vectors, key=top.__getitem__)


@recorded
def profile_keys(
    lm: LoadedModel,
    windows: Segments,
    *,
    chunks: list[int] = (10, 50, 100),
    seeds: int = 10,
    sites: str = "final-block",
    batch_size: int = 8,
    cache: bool | str | Path = True,
    progress: bool = True,
) -> KeyProfile:
    """Dispersion of last-token vectors per site and N; ``windows`` = all chunk windows of the data
    (``make_segments(..., n_segments=None, seq_len=chunk_len)``)."""
    t0 = time.perf_counter()
    chunks = sorted(set(chunks))
    n_windows = len(windows)
    if chunks[0] < 2:
        raise RepdispError("--chunks must all be at least 2")
    if chunks[-1] > n_windows:
        raise RepdispError(
            f"data has only {n_windows} chunks of this length; ask for at most --chunks {n_windows}"
        )
    if seeds < 1:
        raise RepdispError("--seeds must be at least 1")
    names = [s.name for s in lm.parse_sites(SITE_SETS.get(sites, sites))]
    draws = [np.random.default_rng(s).permutation(n_windows)[: chunks[-1]] for s in range(seeds)]
    union = np.unique(np.concatenate(draws))
    sub = Segments(windows.ids[union], windows.index[union], windows.has_bos, windows.source)
    ex = extract(
        lm,
        sub,
        names,
        "last",
        perplexity=False,
        batch_size=batch_size,
        cache=cache,
        progress=progress,
    )
    row_of = np.searchsorted(union, np.stack(draws))  # (seeds, max N) rows into the extraction
    rows, best = key_rows({site: ex.get(site, "last") for site in names}, row_of, chunks)
    profile = KeyProfile(
        model=lm.name,
        data=windows.source,
        chunk_len=windows.ids.shape[1] - int(windows.has_bos),
        n_windows=n_windows,
        seeds=seeds,
        chunks=chunks,
        sites=names,
        n_extracted=len(union),
        recommended=best,
        rows=rows,
        seconds=time.perf_counter() - t0,
    )
    return record(profile, models=lm, data=sub)


def plot_profile(profile: KeyProfile) -> Any:
    """Dispersion vs N per site (error bars = std over seeds); with many sites, vs depth per N."""
    fig, ax = new_figure(figsize=(6, 4))
    if len(profile.sites) <= 4:
        for s in profile.sites:
            rs = [profile.row(s, n) for n in profile.chunks]
            ax.errorbar(
                profile.chunks,
                [r.mean for r in rs],
                yerr=[r.std for r in rs],
                marker="o",
                capsize=3,
                label=s,
            )
        ax.set_xlabel("N chunks")
    else:
        for n in profile.chunks:
            rs = [profile.row(s, n) for s in profile.sites]
            ax.errorbar(
                range(len(rs)),
                [r.mean for r in rs],
                yerr=[r.std for r in rs],
                marker=".",
                capsize=2,
                label=f"N={n}",
            )
        ax.set_xticks(range(len(profile.sites)), profile.sites, rotation=90, fontsize=6)
        ax.set_xlabel("site")
    ax.set_ylabel("dispersion: mean cosine distance (± std over seeds)")
    ax.set_title(f"{profile.model}: key dispersion ({profile.seeds} seeds)")
    ax.legend(fontsize=7)
    return fig
