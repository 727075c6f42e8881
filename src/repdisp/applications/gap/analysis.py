"""The dispersion gap of each checkpoint, their ranking by G, and G-vs-accuracy correlations."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...core.errors import RepdispError
from ...core.models import cache_root
from ...core.shards import atomic_write
from ...core.stats import Correlation
from ...io.results import Result, new_figure, record, recorded
from .distances import METRICS, GapComponents, gap_components
from .rows import EmbeddingRows, _matrix_shape
from .words import DOMAINS, REFERENCES, TokenSet, load_words, token_set


@dataclass
class CheckpointGap:
    model: str
    source: str  # safetensors | gguf
    tensor: str
    tied: bool
    matrix_shape: tuple[int, int]
    n_domain: int
    n_reference: int
    skipped_domain: list[str]
    skipped_reference: list[str]
    cosine: GapComponents
    euclidean: GapComponents
    accuracy: float | None = None

    def row(self) -> dict[str, Any]:
        out = {
            "model": self.model,
            "source": self.source,
            "tensor": self.tensor,
            "n_domain": self.n_domain,
            "n_reference": self.n_reference,
            "n_skipped_domain": len(self.skipped_domain),
            "n_skipped_reference": len(self.skipped_reference),
        }
        for m in METRICS:
            c: GapComponents = getattr(self, m)
            out |= {
                f"{m}_within_domain": c.within_domain,
                f"{m}_within_reference": c.within_reference,
                f"{m}_between": c.between,
                f"{m}_gap": c.gap,
            }
        return out | {"accuracy": self.accuracy}


def _token_sets(
    src: EmbeddingRows,
    domain_words: tuple[str, list[str]],
    reference_words: tuple[str, list[str]],
    tokenizers: dict[str, Any],
) -> tuple[TokenSet, TokenSet]:
    """Token sets of a checkpoint, cached on disk under ``$REPDISP_HOME/gap_tokens`` by
    (tokenizer, word lists): loading a large tokenizer costs more than the whole gap."""
    key = src.tokenizer_key()
    spec = json.dumps([key, domain_words, reference_words])
    path = cache_root() / "gap_tokens" / f"{hashlib.sha256(spec.encode()).hexdigest()[:20]}.json"
    if path.exists():
        try:
            return tuple(
                TokenSet(d["name"], np.array(d["ids"], dtype=np.int64), d["words"], d["skipped"])
                for d in json.loads(path.read_text())
            )
        except (ValueError, KeyError, TypeError):
            pass  # a broken cache file only costs the tokenizer load
    if key not in tokenizers:
        tokenizers[key] = src.tokenizer()
    sets = (token_set(tokenizers[key], *domain_words), token_set(tokenizers[key], *reference_words))
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps([{**vars(t), "ids": t.ids.tolist()} for t in sets]).encode()
    atomic_write(path, lambda f: f.write(text))
    return sets


def checkpoint_gap(
    spec: str | EmbeddingRows,
    domain_words: tuple[str, list[str]],
    reference_words: tuple[str, list[str]],
    tokenizers: dict[str, Any] | None = None,
) -> CheckpointGap:
    """Gap components of one checkpoint (a spec, or its opened ``EmbeddingRows``), reading only
    the rows of the two token sets. ``tokenizers`` caches loaded tokenizers by
    ``tokenizer_key`` across checkpoints."""
    src = spec if isinstance(spec, EmbeddingRows) else EmbeddingRows(spec)
    spec = src.spec
    t, r = _token_sets(src, domain_words, reference_words, {} if tokenizers is None else tokenizers)
    rows = src.rows(np.concatenate([t.ids, r.ids]))
    dom, ref = rows[: len(t.ids)], rows[len(t.ids) :]
    return CheckpointGap(
        spec,
        src.kind,
        src.tensor,
        src.tied,
        _matrix_shape(src),
        len(t.ids),
        len(r.ids),
        t.skipped,
        r.skipped,
        gap_components(dom, ref, "cosine"),
        gap_components(dom, ref, "euclidean"),
    )


@dataclass
class GapResult(Result):
    kind: ClassVar[str] = "gap"
    run_keys: ClassVar[tuple[str, ...]] = ()

    domain: str
    reference: str
    metric: str  # the one used for ranking and correlations
    checkpoints: list[CheckpointGap]
    ranking: list[str]  # highest gap first
    spearman: Correlation | None = None
    kendall: Correlation | None = None
    notes: list[str] = field(default_factory=list)

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"checkpoints": [c.row() for c in self.checkpoints]}

    def figure(self) -> Any:
        return plot_gap(self)

    def headline(self) -> dict[str, Any] | None:
        if not self.checkpoints:
            return None
        top = next(c for c in self.checkpoints if c.model == self.ranking[0])
        g = getattr(top, self.metric).gap
        what = (
            f"dispersion gap G ({self.metric}) of the output embeddings of {self.domain} tokens vs "
            f"{self.reference}: {len(self.checkpoints)} checkpoints ranked"
        )
        c = self.spearman
        if c is None:
            return {
                "what": what,
                "value": g,
                "ci": None,
                "answer": f"highest G: {Path(top.model).name} ({g:.4f}); ranking "
                + " > ".join(Path(m).name for m in self.ranking),
                "significant": None,
            }
        return {
            "what": what + " and correlated with accuracy",
            "value": c.r,
            "ci": [c.ci_low, c.ci_high],
            "answer": f"Spearman r(G, accuracy) = {c.r:+.3f} [95% CI {c.ci_low:+.3f}, "
            f"{c.ci_high:+.3f}], p = {c.p_value:.2g}, n = {c.n}; highest G: {Path(top.model).name}",
            "significant": bool(c.p_value < 0.05 and (c.ci_low > 0 or c.ci_high < 0)),
        }

    def table(self) -> str:
        m = self.metric
        lines = [
            f"domain {self.domain} vs reference {self.reference}; metric {m}; G = within(T) + "
            "between(T,T')",
            f"{'model':<44} {'src':<11} {'|T|':>4} {'|T`|':>4} {'within T':>9} {'within T`':>9} "
            f"{'between':>9} {'G':>9} {'acc':>6}",
        ]
        for c in self.checkpoints:
            g: GapComponents = getattr(c, m)
            acc = "" if c.accuracy is None else f"{c.accuracy:6.2f}"
            lines.append(
                f"{c.model[-44:]:<44} {c.source:<11} {c.n_domain:>4} {c.n_reference:>4} "
                f"{g.within_domain:9.4f} {g.within_reference:9.4f} {g.between:9.4f} "
                f"{g.gap:9.4f} {acc:>6}"
            )
        lines.append("ranking (G, high to low): " + " > ".join(self.ranking))
        for c in (self.spearman, self.kendall):
            if c is not None:
                lines.append(f"G vs accuracy: {c}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


@recorded
def rank_by_gap(
    models: list[str],
    domain: str,
    *,
    reference: str = "everyday",
    metric: str = "cosine",
    accuracy: dict[str, float] | None = None,
) -> GapResult:
    """Gap of every checkpoint, their ranking by G, and G-vs-accuracy rank correlations."""
    from ...core.stats import correlation

    if metric not in METRICS:
        raise RepdispError(f"unknown metric {metric!r}; choose {', '.join(METRICS)}")
    dom, ref = load_words(domain, DOMAINS), load_words(reference, REFERENCES)
    accuracy = accuracy or {}
    unknown = set(accuracy) - set(models)
    if unknown:
        raise RepdispError(f"--accuracy names models not given with --model: {sorted(unknown)}")
    ckpts, tokenizers = [], {}
    for spec in models:
        c = checkpoint_gap(spec, dom, ref, tokenizers)
        c.accuracy = accuracy.get(spec)
        ckpts.append(c)
    ranking = [c.model for c in sorted(ckpts, key=lambda c: -getattr(c, metric).gap)]
    res = GapResult(dom[0], ref[0], metric, ckpts, ranking)
    record(res, models=[{"name": c.model, "tensor": c.tensor, "source": c.source} for c in ckpts])
    with_acc = [c for c in ckpts if c.accuracy is not None]
    if len(with_acc) >= 3:
        g = [getattr(c, metric).gap for c in with_acc]
        a = [c.accuracy for c in with_acc]
        res.spearman = correlation(g, a, "spearman")
        res.kendall = correlation(g, a, "kendall")
    elif accuracy:
        res.notes.append(f"{len(with_acc)} models with accuracy: correlation needs at least 3")
    if len({c.matrix_shape for c in ckpts}) > 1:
        res.notes.append(
            "checkpoints have different vocabularies/widths: token sets differ (see n_domain, "
            "skipped) and Euclidean values depend on each model's embedding scale"
        )
    return res


def plot_gap(res: GapResult):
    """Fig. 9 style: D-D (within T), D-NM (between T, T') and gap bars; accuracy as a line."""
    fig, ax = new_figure(figsize=(max(4.5, 2.2 * len(res.checkpoints)), 3.6))
    x = np.arange(len(res.checkpoints))
    comps = [getattr(c, res.metric) for c in res.checkpoints]
    for k, (label, vals) in enumerate(
        (
            ("D-D (within T)", [g.within_domain for g in comps]),
            ("D-NM (between T,T')", [g.between for g in comps]),
            ("Gap G", [g.gap for g in comps]),
        )
    ):
        ax.bar(x + (k - 1) * 0.27, vals, width=0.27, label=label)
    names = [f"{Path(c.model).stem[:24]}\n({c.source})" for c in res.checkpoints]
    ax.set_xticks(x, names, fontsize=7)
    ax.set_ylabel(f"{res.metric} distance between output-embedding rows")
    ax.set_title(f"dispersion gap: {res.domain} vs {res.reference}")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    if any(c.accuracy is not None for c in res.checkpoints):
        ax2 = ax.twinx()
        acc = [np.nan if c.accuracy is None else c.accuracy for c in res.checkpoints]
        ax2.plot(x, acc, "k-o", label="accuracy")
        ax2.set_ylabel("accuracy")
        ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.32))
    return fig


def parse_accuracy(items: list[str] | None) -> dict[str, float]:
    """``A=35.0,B=49.8`` (repeatable) into {model: accuracy}."""
    out: dict[str, float] = {}
    for part in (p for item in items or [] for p in item.split(",") if p.strip()):
        name, sep, value = part.rpartition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise RepdispError(f"--accuracy entries look like MODEL=NUMBER, got {part!r}") from None
    return out
