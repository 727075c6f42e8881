"""kNN-LM evaluation: base and kNN-LM perplexity of a text for each site of a datastore, over a
λ × T grid, in one forward pass and one neighbour search per site.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ...core.errors import RepdispError
from ...core.extract import forward_sites
from ...core.models import LoadedModel
from ...io.results import Result, data_provenance, new_figure, record, recorded
from .datastore import Datastore
from .mixture import interpolate, knn_log_prob, perplexity
from .settings import EvalSettings
from .windows import _batches, _window_batch, check_context, plan_windows


@dataclass(kw_only=True)
class SiteEval:
    """kNN-LM perplexity with one site's datastore; ``grid`` rows are {lmbda, temperature, ppl}."""

    site: str
    n_keys: int
    index: str
    knn_ppl: float
    best_ppl: float
    best_lmbda: float
    best_temperature: float
    knn_only_coverage: float  # fraction of targets held by at least one of the k neighbours
    grid: list[dict[str, float]] = field(default_factory=list)


@dataclass(kw_only=True)
class KnnEval(Result):
    kind: ClassVar[str] = "knnlm-eval"
    run_keys: ClassVar[tuple[str, ...]] = ("seconds", "forward_seconds", "search_seconds")

    model: str
    datastore: str
    data: str
    n_tokens: int
    n_targets: int
    context: int
    stride: int
    k: int
    lmbda: float
    temperature: float
    base_ppl: float
    # control: the LM mixed with the datastore's unigram distribution (no retrieval), best λ
    unigram_ppl: float
    unigram_lmbda: float
    sites: list[SiteEval] = field(default_factory=list)
    forward_seconds: float = 0.0
    search_seconds: float = 0.0
    seconds: float = 0.0
    # per-target log p: "base" and each site at its best grid point (not written to JSON)
    log_p: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if k != "log_p"}

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        grid = [{"site": s.site, **row} for s in self.sites for row in s.grid]
        return {"sites": self.rows(), "grid": grid}

    def figure(self) -> Any:
        return plot_eval(self)

    def explain_nonfinite(self, key: str, value: float) -> str | None:
        if "ppl" in key and value == math.inf:
            return (
                "infinite perplexity: at λ = 1 (the kNN distribution alone) a target token that "
                "none of the k neighbours holds gets probability 0"
            )
        return super().explain_nonfinite(key, value)

    def headline(self) -> dict[str, Any] | None:
        if not self.sites:
            return None
        best = min(self.sites, key=lambda s: s.best_ppl)
        return {
            "what": f"kNN-LM perplexity of {self.model} on {self.data} ({self.n_targets} targets, "
            f"k={self.k}) with the datastore {self.datastore}, best site and λ, T on the grid",
            "value": best.best_ppl,
            "ci": None,
            "answer": f"{best.best_ppl:.3f} at {best.site} (λ {best.best_lmbda:g}, T "
            f"{best.best_temperature:g}) vs base {self.base_ppl:.3f}; no-retrieval control "
            f"{self.unigram_ppl:.3f}",
            "significant": None,
        }

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "site": s.site,
                "n_keys": s.n_keys,
                "index": s.index,
                "base_ppl": self.base_ppl,
                "unigram_ppl": self.unigram_ppl,
                "knn_ppl": s.knn_ppl,
                "best_ppl": s.best_ppl,
                "best_lmbda": s.best_lmbda,
                "best_temperature": s.best_temperature,
                "coverage": s.knn_only_coverage,
            }
            for s in self.sites
        ]

    def table(self) -> str:
        head = (
            f"model {self.model} | datastore {self.datastore} | eval {self.data}: {self.n_targets} "
            f"targets (context {self.context}, stride {self.stride}) | k={self.k} "
            f"λ={self.lmbda} T={self.temperature} | {self.seconds:.1f} s\n"
            f"base perplexity {self.base_ppl:.3f} | LM + datastore unigram (no retrieval) "
            f"{self.unigram_ppl:.3f} at λ={self.unigram_lmbda:g}\n"
        )
        lines = [
            f"{'site':<10}{'keys':>9}  {'index':<6}{'kNN-LM ppl':>11}{'best ppl':>10}  best λ, T   coverage"
        ]
        lines += [
            f"{s.site:<10}{s.n_keys:>9}  {s.index:<6}{s.knn_ppl:>11.3f}{s.best_ppl:>10.3f}  "
            f"{s.best_lmbda:g}, {s.best_temperature:<6g} {s.knn_only_coverage:8.3f}"
            for s in self.sites
        ]
        return head + "\n".join(lines)


@recorded
def evaluate_knnlm(
    lm: LoadedModel,
    datastore: Datastore,
    tokens: np.ndarray,
    *,
    source: str = "",
    sites: list[str] | None = None,
    k: int = 1024,
    lmbda: float = 0.25,
    temperature: float = 1.0,
    lmbda_grid: list[float] | None = None,
    temperature_grid: list[float] | None = None,
    context: int = 512,
    stride: int = 256,
    batch_size: int = 4,
    nprobe: int = 32,
    progress: bool = True,
) -> KnnEval:
    """Base and kNN-LM perplexity of ``tokens`` for each site of the datastore, in one pass.

    The grids (λ × T) are scored on the same text; the neighbours are searched once. The
    keywords become an ``EvalSettings`` for ``run_evaluate_knnlm``."""
    return run_evaluate_knnlm(
        lm,
        datastore,
        tokens,
        EvalSettings(
            k=k,
            lmbda=lmbda,
            temperature=temperature,
            lmbda_grid=lmbda_grid,
            temperature_grid=temperature_grid,
            context=context,
            stride=stride,
            batch_size=batch_size,
            nprobe=nprobe,
        ),
        sites,
        source,
        progress,
    )


def run_evaluate_knnlm(
    lm: LoadedModel,
    datastore: Datastore,
    tokens: np.ndarray,
    settings: EvalSettings,
    sites: list[str] | None = None,
    source: str = "",
    progress: bool = True,
) -> KnnEval:
    """``evaluate_knnlm`` on an ``EvalSettings`` (the commands call this)."""
    k, lmbda, temperature, nprobe = settings.k, settings.lmbda, settings.temperature, settings.nprobe
    lmbda_grid, temperature_grid = settings.lmbda_grid, settings.temperature_grid
    context, stride, batch_size = settings.context, settings.stride, settings.batch_size
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    if datastore.meta["identity"] != lm.identity:
        built = datastore.meta["model"]
        what = (
            f"another version of {built} (its weights, config, tokenizer or dtype differ)"
            if built == lm.name
            else built
        )
        raise RepdispError(f"datastore {datastore.folder} was built with {what}, not {lm.name}")
    if temperature <= 0 or any(t <= 0 for t in temperature_grid or []):
        raise RepdispError("--temperature must be positive")
    if k < 1:
        raise RepdispError(f"--k must be at least 1 (neighbours per target), got {k}")
    if nprobe < 1:
        raise RepdispError(f"--nprobe must be at least 1, got {nprobe}")
    if not all(0.0 <= x <= 1.0 for x in [lmbda, *(lmbda_grid or [])]):
        raise RepdispError("--lmbda and --lmbda-grid values must be in [0, 1]")
    names = sites or datastore.sites
    site_list = lm.parse_sites(names)
    names = [s.name for s in site_list]
    indexes = {s: datastore.index(s, nprobe) for s in names}
    store_values = np.asarray(datastore.values())
    vocab = getattr(lm.model.config, "vocab_size", None)
    if len(store_values) and (
        store_values.min() < 0 or (vocab is not None and store_values.max() >= vocab)
    ):
        raise RepdispError(
            f"datastore {datastore.folder}: values.npy holds token ids outside [0, {vocab}); it "
            "is corrupt - rebuild it with `repdisp knnlm build`"
        )
    temps = sorted({temperature, *(temperature_grid or [])})
    windows = plan_windows(len(tokens), context, stride)
    check_context(context, lm.max_len, lm.bos_id)
    lp_lm: list[np.ndarray] = []
    lp_knn: dict[str, list[np.ndarray]] = {s: [] for s in names}
    covered: dict[str, int] = dict.fromkeys(names, 0)
    fwd_s = search_s = 0.0
    bar = tqdm(total=len(windows), unit="win", disable=not progress, desc=f"kNN-LM eval {lm.name}")
    for batch in _batches(windows, batch_size):
        wins = [windows[i] for i in batch]
        ids, spans = _window_batch(tokens, wins, lm.bos_id)
        t0 = time.perf_counter()
        states, nll = forward_sites(lm, ids, site_list, perplexity=True)
        fwd_s += time.perf_counter() - t0
        targets = np.concatenate([tokens[n:e] for _, e, n in wins])
        lp_lm.append(
            np.concatenate(
                [-nll[j, lo:hi].double().cpu().numpy() for j, (lo, hi) in enumerate(spans)]
            )
        )
        for s in names:
            q = np.concatenate(
                [states[s][j, lo:hi].float().cpu().numpy() for j, (lo, hi) in enumerate(spans)]
            )
            t0 = time.perf_counter()
            dist, idx = indexes[s].search(np.ascontiguousarray(q, dtype=np.float32), k)
            search_s += time.perf_counter() - t0
            vals = np.where(idx >= 0, store_values[np.maximum(idx, 0)], -1)
            covered[s] += int((vals == targets[:, None]).any(1).sum())
            lp_knn[s].append(np.stack([knn_log_prob(dist, vals, targets, t) for t in temps]))
        bar.update(len(batch))
    bar.close()
    base = np.concatenate(lp_lm)
    all_targets = np.concatenate([tokens[n:e] for _, e, n in windows])
    counts = np.bincount(store_values, minlength=int(all_targets.max()) + 1)
    with np.errstate(divide="ignore"):
        lp_uni = np.log(counts[all_targets] / len(store_values))
    lmbdas = sorted({lmbda, *(lmbda_grid or [])})
    uni_ppl, uni_lmbda = min((perplexity(interpolate(lp_uni, base, x)), x) for x in lmbdas)
    results, log_p = [], {"base": base}
    for s in names:
        knn = np.concatenate(lp_knn[s], axis=1)
        grid = [
            {"lmbda": lm_, "temperature": t, "ppl": perplexity(interpolate(knn[ti], base, lm_))}
            for ti, t in enumerate(temps)
            for lm_ in lmbdas
        ]
        best = min(grid, key=lambda r: r["ppl"])
        log_p[s] = interpolate(knn[temps.index(best["temperature"])], base, best["lmbda"])
        chosen = next(r for r in grid if r["lmbda"] == lmbda and r["temperature"] == temperature)
        results.append(
            SiteEval(
                site=s,
                n_keys=datastore.meta["n_keys"],
                index=datastore.manifest["index"][s]["kind"],
                knn_ppl=chosen["ppl"],
                best_ppl=best["ppl"],
                best_lmbda=best["lmbda"],
                best_temperature=best["temperature"],
                knn_only_coverage=covered[s] / len(base),
                grid=grid,
            )
        )
    result = KnnEval(
        model=lm.name,
        datastore=str(datastore.folder),
        data=source,
        n_tokens=len(tokens),
        n_targets=len(base),
        context=context,
        stride=stride,
        k=k,
        lmbda=lmbda,
        temperature=temperature,
        base_ppl=perplexity(base),
        unigram_ppl=uni_ppl,
        unigram_lmbda=uni_lmbda,
        sites=results,
        forward_seconds=fwd_s,
        search_seconds=search_s,
        seconds=time.perf_counter() - t_start,
        log_p=log_p,
    )
    data = {"source": source} | data_provenance(tokens) | {"source": source}
    return record(result, models=lm, data=data, datastore=str(datastore.folder))


def plot_eval(result: KnnEval) -> Any:
    """kNN-LM perplexity vs λ per site (at the best temperature), base perplexity dashed."""
    fig, ax = new_figure(figsize=(6, 4))
    for s in result.sites:
        rows = sorted(
            (r for r in s.grid if r["temperature"] == s.best_temperature), key=lambda r: r["lmbda"]
        )
        ax.plot(
            [r["lmbda"] for r in rows],
            [r["ppl"] for r in rows],
            marker="o",
            label=f"{s.site} (T={s.best_temperature:g})",
        )
    ax.axhline(result.base_ppl, color="k", ls="--", lw=1, label="base LM")
    ax.set_xlabel("λ (weight of the kNN distribution)")
    ax.set_ylabel("perplexity, exp(mean NLL) per target token")
    ax.set_title(f"kNN-LM {result.model}: {result.n_targets} targets, k={result.k}")
    ax.legend(fontsize=7)
    return fig
