"""Dispersion within semantic clusters (paper §2.3, Fig. 7).

A cluster is the set of contexts that are followed by the same frequent n-gram: every occurrence
of the n-gram (with a full left context of ``context`` tokens) contributes the vector at the last
context token, the one that predicts the n-gram's first token. Within-cluster distance is the
mean cosine distance of those vectors to their cluster centroid; between-cluster distance is the
mean pairwise cosine distance among the centroids (``geometry.cluster_distances``). Computed for
several checkpoints on identical contexts, so the two curves can be compared across training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.bootstrap import bootstrap_ci
from ..core.corpus import Segments, load_texts, prepend_bos, token_stream
from ..core.errors import RepdispError
from ..core.extract import extract
from ..core.geometry import cluster_distances
from ..core.models import LoadedModel, load_model
from ..core.sampling import Sampling
from ..core.settings import Loading
from ..core.stats import mean_ci
from ..io.results import Result, new_figure, record, recorded, write_result
from .ngrams import NgramCounts, mine_ngrams


@dataclass
class ClusterContexts:
    """The sampled contexts: one row of ``ids`` per occurrence, ``labels`` = its cluster index."""

    segments: Segments
    labels: np.ndarray
    cluster_ngrams: list[int]  # rank (in the mined list) of each used n-gram
    cluster_sizes: np.ndarray


@dataclass
class CheckpointDistances:
    """Distances of one checkpoint; 95% bootstrap CIs resample clusters (within: the clusters'
    mean distances; between: the centroids)."""

    model: str
    within: float
    between: float
    within_ci: tuple[float, float]
    between_ci: tuple[float, float]
    within_per_cluster: np.ndarray = field(repr=False)


@dataclass
class ClustersResult(Result):
    """Sizes of what was mined and used, and the distances per checkpoint."""

    kind: ClassVar[str] = "clusters"

    data: str
    site: str
    n_tokens: int
    ngram: int
    min_count: int
    context: int
    per_cluster: int
    clusters_asked: int
    ngrams_found: int  # distinct n-grams occurring >= min_count times
    clusters_used: int  # of those, the most frequent ones with >= 2 full-context occurrences
    contexts: int  # vectors embedded per checkpoint
    checkpoints: list[CheckpointDistances]
    clusters: list[dict[str, Any]]  # per used cluster: n-gram text, count, used, within per model

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        per_checkpoint = [
            {
                "model": c.model,
                "within": c.within,
                "within_ci_low": c.within_ci[0],
                "within_ci_high": c.within_ci[1],
                "between": c.between,
                "between_ci_low": c.between_ci[0],
                "between_ci_high": c.between_ci[1],
            }
            for c in self.checkpoints
        ]
        return {"checkpoints": per_checkpoint, "ngrams": self.clusters}

    def headline(self) -> dict[str, Any] | None:
        if not self.checkpoints:
            return None
        c = self.checkpoints[-1]
        sep = c.between / c.within if c.within else float("nan")
        return {
            "what": f"within- and between-cluster cosine distance at {self.site} of "
            f"{self.clusters_used} clusters of {self.ngram}-gram contexts ({self.contexts} "
            f"vectors) from {self.data}; last checkpoint {c.model}",
            "value": c.within,
            "ci": list(c.within_ci),
            "answer": f"within {c.within:.4f} [95% CI {c.within_ci[0]:.4f}, {c.within_ci[1]:.4f}], "
            f"between {c.between:.4f} [{c.between_ci[0]:.4f}, {c.between_ci[1]:.4f}]; "
            f"between/within {sep:.2f}",
            "significant": bool(c.between_ci[0] > c.within_ci[1]),
        }

    def figure(self) -> Any:
        """Within and between distance across the checkpoints, with 95% CIs."""
        names = [Path(c.model).name for c in self.checkpoints]
        x = np.arange(len(names))
        fig, ax = new_figure(figsize=(max(4.5, 1.6 * len(names)), 3.4))
        for k, (key, mark, label) in enumerate(
            (
                ("within", "o-", "within-cluster (to centroid)"),
                ("between", "s-", "between-cluster (centroids)"),
            )
        ):
            y = np.array([getattr(c, key) for c in self.checkpoints])
            ci = np.array([getattr(c, f"{key}_ci") for c in self.checkpoints])
            ax.plot(x, y, mark, color=f"C{k}", label=label)
            ax.vlines(x, ci[:, 0], ci[:, 1], color=f"C{k}", lw=1.5)
        ax.set_xticks(x, names, rotation=15)
        ax.set_xlabel("checkpoint")
        ax.set_ylabel("mean cosine distance, 1 - cos (95% CI)")
        ax.set_title(
            f"{self.clusters_used} clusters of {self.ngram}-gram contexts "
            f"({self.contexts} vectors), {Path(self.data).name}"
        )
        ax.grid(alpha=0.3)
        ax.legend()
        return fig

    def table(self) -> str:
        return self.summary()

    def summary(self) -> str:
        head = (
            f"{self.data}: {self.n_tokens:,} tokens; {self.ngrams_found} distinct {self.ngram}-grams "
            f"occur >= {self.min_count} times; using the top {self.clusters_used} (asked "
            f"{self.clusters_asked}) x up to {self.per_cluster} occurrences with {self.context}-token "
            f"left context = {self.contexts} contexts; site {self.site}, last token\n"
        )
        w = max(len("checkpoint"), *(len(c.model) for c in self.checkpoints)) + 2
        rows = [f"{'checkpoint':<{w}}{'within [95% CI]':<29}between [95% CI]"]
        rows += [
            f"{c.model:<{w}}{c.within:.5f} [{c.within_ci[0]:.5f}, {c.within_ci[1]:.5f}]   "
            f"{c.between:.5f} [{c.between_ci[0]:.5f}, {c.between_ci[1]:.5f}]"
            for c in self.checkpoints
        ]
        return head + "\n".join(rows)


def sample_contexts(
    stream: np.ndarray,
    mined: NgramCounts,
    context: int,
    per_cluster: int,
    clusters: int,
    bos: int | None,
    seed: int = 0,
    source: str = "",
) -> ClusterContexts:
    """Up to ``per_cluster`` occurrences (seeded sample) of each of the ``clusters`` most frequent
    n-grams that have a full left context; n-grams with fewer than 2 such occurrences are skipped."""
    if context < 2:
        raise RepdispError(f"--context must be at least 2 tokens, got {context}")
    if per_cluster < 2:
        raise RepdispError(f"--per-cluster must be at least 2, got {per_cluster}")
    rng = np.random.default_rng(seed)
    picked, labels, used = [], [], []
    for k in range(len(mined)):
        if len(used) == clusters:
            break
        pos = mined.positions(k)
        pos = pos[pos >= context]
        if len(pos) < 2:
            continue
        if len(pos) > per_cluster:
            pos = np.sort(rng.choice(pos, per_cluster, replace=False))
        picked.append(pos)
        labels.append(np.full(len(pos), len(used)))
        used.append(k)
    if len(used) < 2:
        raise RepdispError(
            f"only {len(used)} n-gram(s) have 2+ occurrences after a {context}-token left context; "
            "need 2 clusters: lower --min-count, --ngram or --context"
        )
    starts = np.concatenate(picked)
    ids = np.lib.stride_tricks.sliding_window_view(stream, context)[starts - context]
    segs = Segments(np.ascontiguousarray(prepend_bos(ids, bos)), starts, bos is not None, source)
    return ClusterContexts(segs, np.concatenate(labels), used, np.array([len(p) for p in picked]))


@dataclass(frozen=True, kw_only=True)
class ClusterSettings:
    """Which n-gram clusters ``clusters`` builds and reads: n-grams of ``ngram`` tokens seen
    ``min_count``+ times, up to ``n_clusters`` of them with ``per_cluster`` contexts of
    ``context`` tokens each, read at ``site``; ``bootstrap`` resamples for the CIs. The text
    options, seed, batch size, cache and progress travel in ``core.sampling.Sampling``."""

    ngram: int = 10
    min_count: int = 100
    per_cluster: int = 100
    context: int = 100
    n_clusters: int = 500
    site: str = "final"
    bootstrap: int = 1000


@recorded
def clusters(
    models: list[str | LoadedModel],
    data: str,
    *,
    ngram: int = 10,
    min_count: int = 100,
    per_cluster: int = 100,
    context: int = 100,
    n_clusters: int = 500,
    site: str = "final",
    seed: int = 0,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    cache: bool = True,
    progress: bool = True,
    text_field: str = "text",
    encoding_errors: str = "strict",
    split: str | None = None,
    bootstrap: int = 1000,
) -> ClustersResult:
    """Mine n-grams of ``data`` with the first model's tokenizer, embed the sampled contexts with
    every model (they must tokenise the text identically), and measure the cluster distances.
    The keywords become ``ClusterSettings``, ``Sampling`` and ``Loading`` for
    ``run_clusters``."""
    return run_clusters(
        models,
        data,
        ClusterSettings(
            ngram=ngram,
            min_count=min_count,
            per_cluster=per_cluster,
            context=context,
            n_clusters=n_clusters,
            site=site,
            bootstrap=bootstrap,
        ),
        Sampling(
            seed=seed,
            batch_size=batch_size,
            cache=cache,
            progress=progress,
            text_field=text_field,
            encoding_errors=encoding_errors,
            split=split,
        ),
        Loading(device=device, dtype=dtype),
    )


def run_clusters(
    models: list[str | LoadedModel],
    data: str,
    settings: ClusterSettings,
    sampling: Sampling,
    loading: Loading | None = None,
) -> ClustersResult:
    """``clusters`` on settings objects (the command calls this; see ``clusters``)."""
    loading = loading or Loading()
    ngram, min_count, per_cluster = settings.ngram, settings.min_count, settings.per_cluster
    context, n_clusters, site = settings.context, settings.n_clusters, settings.site
    bootstrap, seed, batch_size = settings.bootstrap, sampling.seed, sampling.batch_size
    cache, progress, split = sampling.cache, sampling.progress, sampling.split
    text_field, encoding_errors = sampling.text_field, sampling.encoding_errors
    device, dtype = loading.device, loading.dtype
    docs = load_texts(data, text_field, split, encoding_errors)
    stream = ctx = mined = None
    results, tokenizer, used = [], None, []
    for spec in models:
        lm = spec if isinstance(spec, LoadedModel) else load_model(spec, device, dtype)
        used.append(lm)
        if stream is None:
            tokenizer = lm.tokenizer
            stream = token_stream(lm.tokenizer, docs)
            mined = mine_ngrams(stream, ngram, min_count)
            if len(mined) == 0:
                best = mine_ngrams(stream, ngram, 2)
                top = int(best.counts[0]) if len(best) else 1
                raise RepdispError(
                    f"no {ngram}-gram occurs {min_count}+ times in {len(stream):,} tokens of "
                    f"{data} (the most frequent occurs {top} times): lower --min-count or --ngram"
                )
            ctx = sample_contexts(
                stream, mined, context, per_cluster, n_clusters, lm.bos_id, seed, data
            )
        elif not np.array_equal(token_stream(lm.tokenizer, docs), stream):
            raise RepdispError(f"{lm.name} tokenises {data} differently from {models[0]}")
        ex = extract(
            lm,
            ctx.segments,
            site,
            "last",
            perplexity=False,
            batch_size=batch_size,
            skip_first=0,
            cache=cache,
            progress=progress,
        )
        x = ex.get(ex.sites[0], "last")
        d = cluster_distances(x, ctx.labels)
        centroids = np.stack(
            [x[ctx.labels == k].mean(axis=0) for k in range(len(ctx.cluster_sizes))]
        )
        results.append(
            CheckpointDistances(
                lm.name,
                d.within,
                d.between,
                mean_ci(d.within_per_cluster, bootstrap, seed),
                bootstrap_ci(centroids, bootstrap, seed),
                d.within_per_cluster,
            )
        )
    table = []
    for c, k in enumerate(ctx.cluster_ngrams):
        row = {
            "cluster": c,
            "ngram": tokenizer.decode(mined.ngrams[k].tolist()),
            "count": int(mined.counts[k]),
            "used": int(ctx.cluster_sizes[c]),
        }
        row.update({f"within[{r.model}]": float(r.within_per_cluster[c]) for r in results})
        table.append(row)
    result = ClustersResult(
        data=data,
        site=ex.sites[0],
        n_tokens=len(stream),
        ngram=ngram,
        min_count=min_count,
        context=context,
        per_cluster=per_cluster,
        clusters_asked=n_clusters,
        ngrams_found=len(mined),
        clusters_used=len(ctx.cluster_ngrams),
        contexts=len(ctx.labels),
        checkpoints=results,
        clusters=table,
    )
    return record(result, models=used, data=ctx.segments, seed=seed)


def write_outputs(result: ClustersResult, out: str | Path) -> list[Path]:
    """clusters.json, clusters.csv (per checkpoint), clusters_ngrams.csv (per cluster) and
    clusters.png (within and between distance across the checkpoints)."""
    return write_result(out, "clusters", result)
