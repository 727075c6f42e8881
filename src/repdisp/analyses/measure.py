"""`repdisp measure`: perplexity and dispersion of a model on a text source, in one pass.

Launched with several processes (``torchrun``/``accelerate launch``), each process extracts its
shards into the shared shard folder; the point statistics (dispersion from the float64 sums of
unit vectors and counts, perplexity means from NLL sums) are combined by one all-reduce of sums.
The median perplexity and the bootstrap CIs need every value: after that all-reduce (which every
process reaches only once its shards are written) rank 0 reads all shards back from the shard
folder (checksummed, exact, and cheap: one pooled vector per segment and site) and broadcasts the
finished result. A single process runs the same code with a trivial all-reduce.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core import distributed
from ..core.bootstrap import bootstrap_ci
from ..core.corpus import make_segments
from ..core.errors import RepdispError
from ..core.extract import Extraction, extract, parse_pools
from ..core.geometry import CosineStats
from ..core.models import DEFAULT_MODEL, LoadedModel, as_loaded, load_model, resolve_device
from ..core.precision import DTYPES
from ..core.sampling import Sampling
from ..core.segment_table import segment_rows
from ..core.settings import Loading
from ..core.stats import mean_ci
from ..core.texts import data_name, load_texts
from ..io.results import Result, new_figure, record, recorded, segment_field


@dataclass
class SiteDispersion:
    """Dispersion at one site: Eq. 1 over segment vectors, or the mean token-level value for
    ``within`` pooling; with a percentile-bootstrap CI over segments.

    Examples
    --------
    >>> from repdisp import measure
    >>> r = measure("smollm2-135m", "python-docs", segments=50, seq_len=64)  # doctest: +SKIP
    >>> s = r.sites[0]  # doctest: +SKIP
    >>> s.ci_low <= s.dispersion <= s.ci_high  # doctest: +SKIP
    True
    """

    site: str
    pooling: str
    dispersion: float
    ci_low: float
    ci_high: float
    requested: str = ""  # the name asked for (e.g. blocks.5.hook_resid_post), where different


@dataclass
class MeasureResult(Result):
    """What ``measure`` found: the run's settings, perplexity statistics and one
    ``SiteDispersion`` per site.

    Headline perplexities are exp(mean NLL) (``ppl``: over every predicted token, which for
    equal-length segments is exp of the mean segment NLL; ``last_token_ppl``: over the segments'
    last tokens) and the medians over segments; not the arithmetic mean of exp(NLL), which one
    outlier segment decides. ``segments()`` holds the per-segment values when asked for.

    Examples
    --------
    >>> from repdisp import measure
    >>> r = measure("smollm2-135m", "python-docs", segments=50, seq_len=64)  # doctest: +SKIP
    >>> print(r.table())  # doctest: +SKIP
    """

    kind: ClassVar[str] = "measure"

    model: str
    data: str
    n_segments: int
    seq_len: int
    seed: int
    bos: bool
    ppl: float  # exp(mean NLL over all predicted tokens)
    median_ppl: float  # median over segments of exp(mean NLL of the segment)
    last_token_ppl: float  # exp(mean NLL of the segments' last tokens)
    median_last_token_ppl: float  # median over segments of exp(last-token NLL)
    sites: list[SiteDispersion] = field(default_factory=list)
    seconds: float = 0.0
    # one row per segment (``per_segment=True``; ``segments()``), written as NAME_segments.parquet
    per_segment_rows: list[dict[str, Any]] | None = segment_field()

    def table(self) -> str:
        """A plain-text table for the terminal."""
        head = (
            f"model {self.model} | data {self.data} | {self.n_segments} segments x {self.seq_len} "
            f"tokens (BOS {'yes' if self.bos else 'no'}) | seed {self.seed} | {self.seconds:.1f} s\n"
            f"perplexity exp(mean NLL) {self.ppl:.3f}  median {self.median_ppl:.3f} | "
            f"last token: exp(mean NLL) {self.last_token_ppl:.3f}  "
            f"median {self.median_last_token_ppl:.3f}\n"
        )
        names = [f"{s.requested} ({s.site})" if s.requested else s.site for s in self.sites]
        w = max(12, *(len(n) + 2 for n in names))
        rows = [f"{'site':<{w}}{'pooling':<9}{'dispersion':>11}   95% CI"]
        rows += [
            f"{n:<{w}}{s.pooling:<9}{s.dispersion:>11.5f}   [{s.ci_low:.5f}, {s.ci_high:.5f}]"
            for n, s in zip(names, self.sites, strict=True)
        ]
        return head + "\n".join(rows)

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        common = {"model": self.model, "data": self.data, "n_segments": self.n_segments}
        perplexity = [
            common
            | {
                "statistic": "exp(mean NLL)",
                "sequence": self.ppl,
                "last_token": self.last_token_ppl,
            },
            common
            | {
                "statistic": "median",
                "sequence": self.median_ppl,
                "last_token": self.median_last_token_ppl,
            },
        ]
        return {"sites": [common | asdict(s) for s in self.sites], "perplexity": perplexity}

    def figure(self) -> Any:
        """Dispersion per site with its 95% CI (points along the site order)."""
        if not self.sites:
            return None
        fig, ax = new_figure(figsize=(max(4.5, 0.35 * len(self.sites) + 3), 3.6))
        y = np.array([s.dispersion for s in self.sites])
        lo = np.array([s.ci_low for s in self.sites])
        hi = np.array([s.ci_high for s in self.sites])
        x = np.arange(len(y))
        ax.vlines(x, lo, hi, color="C0", lw=1.5, label="95% bootstrap CI")
        ax.plot(x, y, "o", color="C0", ms=5, label="dispersion")
        ax.set_xticks(x, [s.site for s in self.sites], rotation=45 if len(y) > 6 else 0, fontsize=8)
        ax.set_xlabel("site")
        ax.set_ylabel(f"dispersion ({self.sites[0].pooling}), mean cosine distance")
        ax.set_title(
            f"{self.model} on {self.data}: {self.n_segments} segments x {self.seq_len} tokens, "
            "95% bootstrap CI",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return fig

    def headline(self) -> dict[str, Any] | None:
        if not self.sites:
            return None
        s = self.sites[-1]
        return {
            "what": f"dispersion ({s.pooling} pooling) at {s.site} of {self.model} on {self.data}, "
            f"{self.n_segments} segments x {self.seq_len} tokens",
            "value": s.dispersion,
            "ci": [s.ci_low, s.ci_high],
            "answer": f"{s.dispersion:.4f} [95% CI {s.ci_low:.4f}, {s.ci_high:.4f}]; perplexity "
            f"exp(mean NLL) {self.ppl:.2f}, median {self.median_ppl:.2f}",
            "significant": None,
        }


def _sums(ex: Extraction, sites: list[str], pooling: str, dim: int) -> np.ndarray:
    """This process's mergeable sums: per site the float64 sum of unit vectors and the count
    (``within``: the sum of the values and the count), then the sums of the segments' mean NLL
    and of their last-token NLL, and the number of segments."""
    parts = []
    for site in sites:
        x = ex.vectors.get(f"{site}/{pooling}")
        if x is None or len(x) == 0:
            parts.append(np.zeros((1 if pooling == "within" else dim) + 1))
        elif pooling == "within":
            parts.append(np.array([x.astype(np.float64).sum(), len(x)]))
        else:
            try:
                cs = CosineStats().update(x)
            except RepdispError as e:
                raise RepdispError(f"site {site}: {e}") from None
            parts.append(np.append(cs.total, cs.count))
    nll = np.zeros(0) if ex.mean_nll is None else ex.mean_nll
    last = np.zeros(0) if ex.last_nll is None else ex.last_nll
    parts.append(np.array([nll.sum(), last.sum(), len(nll)]))
    return np.concatenate(parts)


def _site_values(total: np.ndarray, sites: list[str], pooling: str, dim: int) -> list[float]:
    """Dispersion (or mean ``within`` value) per site from all-reduced sums."""
    width = (1 if pooling == "within" else dim) + 1
    values = []
    for k in range(len(sites)):
        block = total[k * width : (k + 1) * width]
        if pooling == "within":
            values.append(float(block[0] / block[1]))
        else:
            values.append(CosineStats(total=block[:-1], count=int(round(block[-1]))).dispersion)
    return values


def _check_arguments(
    model: Any,
    sites: Any,
    pooling: str,
    counts: dict[str, Any],
) -> None:
    """Every argument of ``measure`` that can be judged without the model, judged before it
    loads; each fault is one ``RepdispError`` line naming the option."""
    if not isinstance(model, (str, LoadedModel, tuple)):
        raise RepdispError(
            "model: expected a name/path, a LoadedModel or (hf_model, tokenizer), got "
            f"{type(model).__name__}"
        )
    names = [sites] if isinstance(sites, str) else sites
    if not isinstance(names, (list, tuple)) or not all(isinstance(s, str) for s in names):
        raise RepdispError(f"sites: expected a string or a list of strings, got {sites!r}")
    if pooling not in ("last", "mean", "within"):
        raise RepdispError(f"unknown pooling {pooling!r}; choose last, mean or within")
    least_of = {"bootstrap": 1, "segments": 2, "seq_len": 2, "batch_size": 1, "skip_first": 0}
    for name, value in counts.items():
        flag, least = "--" + name.replace("_", "-"), least_of.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise RepdispError(f"{flag} must be an integer of at least {least}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class MeasureSettings:
    """What ``measure`` reads and how it summarises: the ``sites`` and their ``pooling``,
    ``bootstrap`` resamples for the CIs, ``shard_segments`` per extraction shard, and whether to
    keep one row per segment (``per_segment``). Built once (from the flags, or by ``measure``
    from its keywords) and passed down whole; beside it travel ``core.sampling.Sampling`` (how
    segments are drawn; its ``cache`` may be a shard folder here) and ``core.settings.Loading``."""

    sites: str | list[str] = "final"
    pooling: str = "last"
    bootstrap: int = 1000
    shard_segments: int = 256
    per_segment: bool = False


def measure_keywords(sampling: Sampling, settings: MeasureSettings) -> dict[str, Any]:
    """The keywords of ``measure`` that ``sampling`` and ``settings`` amount to (what a command
    records as its call, so the written provenance reads as the public keyword call)."""
    names = ("segments", "seq_len", "seed", "batch_size", "skip_first", "cache", "progress")
    names += ("text_field", "encoding_errors", "split", "trust_remote_code")
    return {f.name: getattr(settings, f.name) for f in fields(settings)} | {
        n: getattr(sampling, n) for n in names
    }


@recorded
def measure(
    model: str | LoadedModel | tuple = DEFAULT_MODEL,
    data: Any = "python-docs",
    *,
    sites: str | list[str] = "final",
    segments: int = 200,
    seq_len: int = 256,
    pooling: str = "last",
    seed: int = 0,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    bootstrap: int = 1000,
    skip_first: int = 1,
    cache: bool | str | Path = True,
    progress: bool = True,
    text_field: str = "text",
    encoding_errors: str = "strict",
    split: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    shard_segments: int = 256,
    per_segment: bool = False,
) -> MeasureResult:
    """Sample ``segments`` windows of ``seq_len`` tokens from ``data``, run ``model`` once, and
    return per-segment perplexity statistics and the dispersion at each site.

    ``cache``: True (``$REPDISP_HOME/runs/KEY``), a shard folder, or False. Under a multi-process
    launcher the folder must be shared by all processes, so ``cache=False`` is refused there.
    ``per_segment``: also keep one row per segment (``result.segments()``, see
    ``core.segment_table.segment_rows``); this extracts the ``within`` pooling too. The keywords
    become ``Sampling``, ``MeasureSettings`` and ``Loading``, and ``run_measure`` does the work.

    Returns
    -------
    MeasureResult

    Examples
    --------
    >>> import repdisp
    >>> r = repdisp.measure("smollm2-135m", "python-docs", segments=200, seq_len=256)  # doctest: +SKIP
    >>> print(r.table())  # doctest: +SKIP
    """
    return run_measure(
        model,
        data,
        Sampling(
            segments=segments,
            seq_len=seq_len,
            seed=seed,
            batch_size=batch_size,
            skip_first=skip_first,
            cache=cache,
            progress=progress,
            text_field=text_field,
            encoding_errors=encoding_errors,
            split=split,
            trust_remote_code=trust_remote_code,
        ),
        MeasureSettings(
            sites=sites,
            pooling=pooling,
            bootstrap=bootstrap,
            shard_segments=shard_segments,
            per_segment=per_segment,
        ),
        Loading(device=device, dtype=dtype, allow_pickle=allow_pickle),
    )


def run_measure(
    model: str | LoadedModel | tuple,
    data: Any,
    sampling: Sampling,
    settings: MeasureSettings,
    loading: Loading | None = None,
) -> MeasureResult:
    """``measure`` on settings objects (the commands call this; see ``measure``)."""
    loading = loading or Loading()
    sites, pooling, bootstrap = settings.sites, settings.pooling, settings.bootstrap
    shard_segments, per_segment = settings.shard_segments, settings.per_segment
    segments, seq_len, seed = sampling.segments, sampling.seq_len, sampling.seed
    batch_size, skip_first, cache = sampling.batch_size, sampling.skip_first, sampling.cache
    progress, trust_remote_code = sampling.progress, sampling.trust_remote_code
    text_field, encoding_errors, split = sampling.text_field, sampling.encoding_errors, sampling.split
    device, dtype, allow_pickle = loading.device, loading.dtype, loading.allow_pickle
    counts = {"bootstrap": bootstrap, "segments": segments, "seq_len": seq_len}
    counts |= {"batch_size": batch_size, "skip_first": skip_first}
    _check_arguments(model, sites, pooling, counts | {"shard_segments": shard_segments})
    if dtype not in DTYPES:
        raise RepdispError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    docs = load_texts(data, text_field, split, encoding_errors, trust_remote_code)
    start = time.perf_counter()
    if distributed.from_env().world_size > 1 and not cache:
        raise RepdispError("a multi-process run needs the shard cache; drop --no-cache")
    if isinstance(model, tuple):  # (hf_model, tokenizer) already in memory
        model = as_loaded(model)
    dev = model.device if isinstance(model, LoadedModel) else resolve_device(device)
    dist, created = distributed.setup(dev)
    try:
        lm = (
            model
            if isinstance(model, LoadedModel)
            else load_model(
                model, device, dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
            )
        )
        segs = make_segments(
            lm.tokenizer,
            data,
            segments,
            seq_len,
            seed,
            docs,
            lm.max_len,
            cache=bool(cache),  # --no-cache: no token cache either
        )
        site_list = lm.parse_sites(sites)  # parsed once; extract takes the Site objects
        pools = parse_pools(
            [pooling, *(["within" if pooling != "within" else "last"] * per_segment)]
        )
        opts = {"perplexity": True, "batch_size": batch_size, "skip_first": skip_first}
        opts |= {"cache": cache, "shard_segments": shard_segments}
        ex = extract(
            lm,
            segs,
            site_list,
            pools,
            progress=progress and dist.is_main,
            rank=dist.rank,
            world_size=dist.world_size,
            **opts,
        )
        dim = lm.d_model
        total = dist.all_reduce_sum(_sums(ex, ex.sites, pooling, dim), lm.device)
        result = None
        if dist.is_main:
            if dist.world_size > 1:  # every shard is written by now: read them all back
                ex = extract(
                    lm, segs, site_list, pools, progress=False, rank=0, world_size=1, **opts
                )
            site_results, ppl = _summaries(ex, total, pooling, dim, bootstrap, seed)
            result = MeasureResult(
                model=lm.name,
                data=data_name(data),
                n_segments=len(segs),
                seq_len=seq_len,
                seed=seed,
                bos=segs.has_bos,
                **ppl,
                sites=site_results,
                seconds=time.perf_counter() - start,
            )
            record(result, models=lm, data=segs, seed=seed)
            if per_segment:
                across = pooling if pooling != "within" else "last"
                result.per_segment_rows = [
                    {"model": lm.name, "data": data} | row
                    for row in segment_rows(ex, segs, across)
                ]
        return dist.broadcast(result, lm.device)
    finally:
        if created:
            distributed.teardown()


def _summaries(
    ex: Extraction, total: np.ndarray, pooling: str, dim: int, bootstrap: int, seed: int
) -> tuple[list[SiteDispersion], dict[str, float]]:
    """Per-site results and perplexity statistics: point values from the summed ``total``,
    the median and the CIs from all of ``ex``."""
    values = _site_values(total, ex.sites, pooling, dim)
    results = []
    for site, value in zip(ex.sites, values, strict=True):
        x = ex.get(site, pooling)
        lo, hi = (
            mean_ci(x, bootstrap, seed) if pooling == "within" else bootstrap_ci(x, bootstrap, seed)
        )
        results.append(SiteDispersion(site, pooling, value, lo, hi, ex.requested.get(site, "")))
    nll_sum, last_sum, n = total[-3:]
    ppl = {
        "ppl": float(np.exp(nll_sum / n)),
        "median_ppl": float(np.median(ex.seq_ppl)),
        "last_token_ppl": float(np.exp(last_sum / n)),
        "median_last_token_ppl": float(np.median(ex.last_ppl)),
    }
    return results, ppl
