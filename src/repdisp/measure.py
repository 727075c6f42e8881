"""`repdisp measure`: perplexity and dispersion of a model on a text source, in one pass."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .corpus import make_segments
from .errors import RepdispError
from .extract import extract
from .geometry import bootstrap_ci, dispersion
from .models import DEFAULT_MODEL, LoadedModel, load_model


@dataclass
class SiteDispersion:
    """Dispersion at one site: Eq. 1 over segment vectors, or the mean token-level value for
    ``within`` pooling; with a percentile-bootstrap CI over segments."""

    site: str
    pooling: str
    dispersion: float
    ci_low: float
    ci_high: float


@dataclass
class MeasureResult:
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


def mean_ci(values: np.ndarray, reps: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of a mean."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (reps, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def measure(
    model: str | LoadedModel = DEFAULT_MODEL,
    data: str = "python-docs",
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
    cache: bool = True,
    progress: bool = True,
    text_field: str = "text",
    encoding_errors: str = "strict",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> MeasureResult:
    """Sample ``segments`` windows of ``seq_len`` tokens from ``data``, run ``model`` once, and
    return per-segment perplexity statistics and the dispersion at each site."""
    if pooling not in ("last", "mean", "within"):
        raise RepdispError(f"unknown pooling {pooling!r}; choose last, mean or within")
    if bootstrap < 1:
        raise RepdispError("--bootstrap must be at least 1")
    start = time.perf_counter()
    lm = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, device, dtype, trust_remote_code, allow_pickle)
    )
    max_len = getattr(lm.model.config, "max_position_embeddings", None)
    segs = make_segments(
        lm.tokenizer,
        data,
        segments,
        seq_len,
        seed,
        max_len=max_len,
        text_field=text_field,
        encoding_errors=encoding_errors,
    )
    ex = extract(lm, segs, sites, pooling, True, batch_size, skip_first, cache, progress)
    results = []
    for site in ex.sites:
        x = ex.get(site, pooling)
        if pooling == "within":
            value, (lo, hi) = float(x.mean()), mean_ci(x, bootstrap, seed)
        else:
            value, (lo, hi) = dispersion(x), bootstrap_ci(x, bootstrap, seed)
        results.append(SiteDispersion(site, pooling, value, lo, hi))
    ppl = ex.seq_ppl
    return MeasureResult(
        model=lm.name,
        data=data,
        n_segments=len(segs),
        seq_len=seq_len,
        seed=seed,
        bos=segs.has_bos,
        mean_ppl=float(ppl.mean()),
        median_ppl=float(np.median(ppl)),
        token_ppl=float(np.exp(ex.mean_nll.mean())),
        mean_last_token_ppl=float(ex.last_ppl.mean()),
        sites=results,
        seconds=time.perf_counter() - start,
    )
