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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import distributed
from ..core.corpus import make_segments
from ..core.errors import RepdispError
from ..core.extract import Extraction, extract
from ..core.geometry import CosineStats, bootstrap_ci
from ..core.models import DEFAULT_MODEL, LoadedModel, as_loaded, load_model, resolve_device
from ..core.stats import mean_ci


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


@dataclass
class MeasureResult:
    """What ``measure`` found: the run's settings, perplexity statistics and one
    ``SiteDispersion`` per site.

    Examples
    --------
    >>> from repdisp import measure
    >>> r = measure("smollm2-135m", "python-docs", segments=50, seq_len=64)  # doctest: +SKIP
    >>> print(r.table())  # doctest: +SKIP
    """

    model: str
    data: str
    n_segments: int
    seq_len: int
    seed: int
    bos: bool
    mean_ppl: float  # mean over segments of exp(mean NLL of the segment)
    median_ppl: float
    token_ppl: float  # exp(mean NLL over all predicted tokens)
    mean_last_token_ppl: float
    sites: list[SiteDispersion] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A plain-text table for the terminal."""
        head = (
            f"model {self.model} | data {self.data} | {self.n_segments} segments x {self.seq_len} "
            f"tokens (BOS {'yes' if self.bos else 'no'}) | seed {self.seed} | {self.seconds:.1f} s\n"
            f"perplexity: mean {self.mean_ppl:.3f}  median {self.median_ppl:.3f}  "
            f"token-level {self.token_ppl:.3f}  last token (mean) {self.mean_last_token_ppl:.3f}\n"
        )
        rows = [f"{'site':<12}{'pooling':<9}{'dispersion':>11}   95% CI"]
        rows += [
            f"{s.site:<12}{s.pooling:<9}{s.dispersion:>11.5f}   [{s.ci_low:.5f}, {s.ci_high:.5f}]"
            for s in self.sites
        ]
        return head + "\n".join(rows)


def _sums(ex: Extraction, sites: list[str], pooling: str, dim: int) -> np.ndarray:
    """This process's mergeable sums: per site the float64 sum of unit vectors and the count
    (``within``: the sum of the values and the count), then the sums of mean NLL, of segment
    perplexity and of last-token perplexity, and the number of segments."""
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
    parts.append(np.array([nll.sum(), np.exp(nll).sum(), np.exp(last).sum(), len(nll)]))
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


def measure(
    model: str | LoadedModel | tuple = DEFAULT_MODEL,
    data: str = "python-docs",
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
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    shard_segments: int = 256,
) -> MeasureResult:
    """Sample ``segments`` windows of ``seq_len`` tokens from ``data``, run ``model`` once, and
    return per-segment perplexity statistics and the dispersion at each site.

    ``cache``: True (``$REPDISP_HOME/runs/KEY``), a shard folder, or False. Under a multi-process
    launcher the folder must be shared by all processes, so ``cache=False`` is refused there.

    Returns
    -------
    MeasureResult

    Examples
    --------
    >>> import repdisp
    >>> r = repdisp.measure("smollm2-135m", "python-docs", segments=200, seq_len=256)  # doctest: +SKIP
    >>> print(r.table())  # doctest: +SKIP
    """
    if pooling not in ("last", "mean", "within"):
        raise RepdispError(f"unknown pooling {pooling!r}; choose last, mean or within")
    if bootstrap < 1:
        raise RepdispError("--bootstrap must be at least 1")
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
            max_len=lm.max_len,
            text_field=text_field,
            encoding_errors=encoding_errors,
        )
        opts = {"perplexity": True, "batch_size": batch_size, "skip_first": skip_first}
        opts |= {"cache": cache, "shard_segments": shard_segments}
        ex = extract(
            lm,
            segs,
            sites,
            pooling,
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
                ex = extract(lm, segs, sites, pooling, progress=False, rank=0, world_size=1, **opts)
            site_results, ppl = _summaries(ex, total, pooling, dim, bootstrap, seed)
            result = MeasureResult(
                model=lm.name,
                data=data,
                n_segments=len(segs),
                seq_len=seq_len,
                seed=seed,
                bos=segs.has_bos,
                **ppl,
                sites=site_results,
                seconds=time.perf_counter() - start,
            )
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
        results.append(SiteDispersion(site, pooling, value, lo, hi))
    nll_sum, ppl_sum, last_sum, n = total[-4:]
    ppl = {
        "mean_ppl": float(ppl_sum / n),
        "median_ppl": float(np.median(ex.seq_ppl)),
        "token_ppl": float(np.exp(nll_sum / n)),
        "mean_last_token_ppl": float(last_sum / n),
    }
    return results, ppl
