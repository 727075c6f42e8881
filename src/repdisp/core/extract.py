"""One forward pass per batch: perplexity, last-token NLL and pooled vectors at every site.

Poolings (over positions ``skip_first:``, so the BOS token or the outlier first token is left out):

    last     the last token's vector (the paper's default h_N), (N, d)
    mean     mean over tokens, (N, d)
    within   the cosine dispersion among the segment's own tokens, (N,)
    tokens   every token's vector, float16, (N, T, d): big, for token-level analyses

Perplexity is computed from the body's final hidden states in token chunks, so fp32 logits for
the whole batch never exist at once. Without perplexity the forward stops after the deepest
site and the LM head never runs. Results are written in shards under a key that covers
everything that changes them (model identity and weights hash, dtype, the exact token ids - so data
content, tokenizer, seed, sizes and BOS -, sites, poolings, perplexity, skip_first), so an
interrupted run resumes from its finished shards. Each shard is written atomically (temp file +
rename) and then a small ``shard_XXXXX.json`` record of its sha256, key and segment range (also
atomic); a shard whose record is missing, names another key or another range (a different shard
size), or whose checksum does not match is recomputed, never used. Per-shard records (rather
than one shared manifest) let several processes write shards into the same folder at once;
``manifest.json`` only describes the run.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import Segments
from .errors import RepdispError
from .models import LoadedModel, cache_root
from .shards import ShardStore
from .sites import Site, SiteReader, StopForward, check_sites, final_site

POOLS = ("last", "mean", "within", "tokens")


class Pools(tuple):
    """Poolings checked once (``parse_pools``); passed on as they are, never checked again."""


def parse_pools(pools: str | list[str] | Pools, allowed: tuple[str, ...] = POOLS) -> Pools:
    """The poolings asked for, validated against ``allowed`` once: a ``Pools`` tuple."""
    if isinstance(pools, Pools):
        return pools
    items = [pools] if isinstance(pools, str) else list(pools)
    for p in items:
        if p not in allowed:
            raise RepdispError(f"unknown pooling {p!r}; choose from {', '.join(allowed)}")
    return Pools(items)


def resolve_sites(lm: LoadedModel, sites: str | list[str] | list[Site]) -> list[Site]:
    """Sites as ``Site`` objects: names are parsed (``lm.parse_sites``), already parsed sites
    are only checked against this architecture."""
    if isinstance(sites, (list, tuple)) and sites and all(isinstance(s, Site) for s in sites):
        check_sites(lm.model.config, list(sites))
        return sorted(sites)
    return lm.parse_sites(sites)


_CACHE_VERSION = 2
_LOGIT_BYTES = 1 << 28  # fp32 logits held at once while computing perplexity: 256 MiB


@dataclass
class Extraction:
    """What one pass over the segments produced. ``vectors`` is keyed ``"site/pool"``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from repdisp import LoadedModel, Segments, extract
    >>> cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50,
    ...                  bos_token_id=0, eos_token_id=0)
    >>> net = GPT2LMHeadModel(cfg).eval()
    >>> lm = LoadedModel(net, None, "tiny", "tiny-doc", torch.device("cpu"), torch.float32)
    >>> segs = Segments(np.arange(40).reshape(4, 10), np.arange(4), False, "toy")
    >>> ex = extract(lm, segs, "final", ["last", "mean"], cache=False, progress=False)
    >>> sorted(ex.vectors), ex.get("final", "mean").shape, ex.seq_ppl.shape
    (['final/last', 'final/mean'], (4, 16), (4,))
    """

    sites: list[str]
    pools: list[str]
    vectors: dict[str, np.ndarray] = field(repr=False)
    mean_nll: np.ndarray | None = field(default=None, repr=False)
    last_nll: np.ndarray | None = field(default=None, repr=False)
    requested: dict[str, str] = field(default_factory=dict)  # site -> name asked, where different
    # segments this call ran through the model (the rest came from the shard cache): the share
    # of a plain forward the call cost (reproduce's floors)
    computed: int = field(default=0, compare=False)

    def get(self, site: str, pool: str = "last") -> np.ndarray:
        key = f"{site}/{pool}"
        if key not in self.vectors:
            raise RepdispError(f"{key} was not extracted; have {sorted(self.vectors)}")
        return self.vectors[key]

    @property
    def seq_ppl(self) -> np.ndarray:
        """Sequence-level perplexity per segment: exp(mean NLL over its predicted tokens)."""
        if self.mean_nll is None:
            raise RepdispError("perplexity was not computed in this extraction")
        return np.exp(self.mean_nll)

    @property
    def last_ppl(self) -> np.ndarray:
        """Perplexity of each segment's last token: exp(its NLL)."""
        if self.last_nll is None:
            raise RepdispError("perplexity was not computed in this extraction")
        return np.exp(self.last_nll)


def token_nll(model: Any, hidden: Any, ids: Any) -> Any:
    """NLL (float32, shape (B, T-1)) of ids[:, 1:] given final hidden states, in chunks of tokens."""
    import torch

    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    vocab = head.weight.shape[0]
    offloaded = head.weight.is_meta  # accelerate brings the weights in at the head's forward
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = ids[:, 1:].reshape(-1)
    chunk = max(1, _LOGIT_BYTES // (4 * vocab))
    out = torch.empty(len(h), dtype=torch.float32, device=h.device)
    kind = h.device.type
    if torch.is_autocast_enabled(kind) and isinstance(head, torch.nn.Linear) and not offloaded:
        # bf16-mixed: cast the head once per call, not once per chunk (autocast would recast
        # all vocab x d weights for every chunk: 4x per batch for Gemma's 262k vocabulary)
        dt = torch.get_autocast_dtype(kind)
        w = head.weight.to(dt)
        b = head.bias.to(dt) if head.bias is not None else None
        h = h.to(dt)

        def head(x: Any, w: Any = w, b: Any = b) -> Any:
            with torch.autocast(kind, enabled=False):
                return torch.nn.functional.linear(x, w, b)

    for s in range(0, len(h), chunk):
        logits = head(h[s : s + chunk]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        # under device_map the head may sit on another device than h: one no-op .to() else.
        # cross_entropy = logsumexp - the target's logit in one fused kernel (1.8x faster on CPU
        # than torch.logsumexp + gather at a 49k vocabulary; equal to 1e-6 relative)
        nll = torch.nn.functional.cross_entropy(
            logits, targets[s : s + chunk].to(logits.device), reduction="none"
        )
        out[s : s + chunk] = nll.to(out.device)
    return out.view(ids.shape[0], -1)


def _within(h: Any) -> Any:
    """Cosine dispersion among each segment's own tokens, (B,), from exact O(T·d) sums in float32.

    With u_i = h_i/||h_i||, D = 1 - (||Σ u_i||² - n) / (n (n - 1)). Σ u_i is one batched
    product (1/||h_i||) @ h, so no normalised copy and no T×T matrix exist. Rounding: ||Σ u||²
    carries a relative error of about n·2^-24, so D is exact to about 1e-6 absolute for any D."""
    import torch

    n = h.shape[1]
    if n < 2:
        raise RepdispError("'within' pooling needs at least 2 tokens after --skip-first")
    x = h.float()
    inv = torch.linalg.vector_norm(x, dim=-1).reciprocal()  # (B, n); zero rows give inf -> NaN
    s = torch.bmm(inv.unsqueeze(1), x).squeeze(1)  # (B, d) = Σ u_i
    return 1.0 - ((s * s).sum(-1) - n) / (n * (n - 1))


def _pool(h: Any, pool: str, skip_first: int) -> Any:
    """One pooling of a site's hidden states (B, T, d) as a tensor on the model's device."""
    import torch

    h = h[:, skip_first:]
    if pool == "last":
        return h[:, -1].to(torch.float32, copy=True)  # a copy: a view would keep all of h
    if pool == "mean":
        return h.float().mean(1)
    if pool == "tokens":
        return h.to(torch.float16)
    return _within(h)


def _to_device(ids: np.ndarray, device: Any) -> Any:
    """Token ids as a tensor on ``device``: through pinned memory and an asynchronous copy on
    CUDA, so the host never waits for the GPU here."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(ids))
    if getattr(device, "type", str(device)) == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def forward_sites(
    lm: LoadedModel, ids: np.ndarray, sites: list[Site], perplexity: bool
) -> tuple[dict[str, Any], Any]:
    """One forward of a batch of equal-length ids: hidden states (B, T, d) per site name and, if
    ``perplexity``, the per-token NLL (B, T-1). Stops after the deepest site when nothing later
    (the final norm, the LM head) is needed."""

    x = _to_device(ids, lm.device)
    read = sorted(set(sites) | ({final_site(lm.n_blocks)} if perplexity else set()))
    with lm.inference(), SiteReader(lm.model, read, stop_early=True) as reader:
        try:
            lm.model.base_model(input_ids=x, use_cache=False)
        except StopForward:
            pass
        values = dict(reader.values)
        nll = token_nll(lm.model, values["final"], x) if perplexity else None
    return values, nll


def _forward_batch(
    lm: LoadedModel,
    ids: np.ndarray,
    sites: list[Site],
    pools: list[str],
    perplexity: bool,
    skip_first: int,
) -> dict[str, Any]:
    """Pooled outputs of one batch as tensors left on the device (no host sync per batch)."""
    import torch

    out: dict[str, Any] = {}
    values, nll = forward_sites(lm, ids, sites, perplexity)
    with torch.inference_mode():
        if nll is not None:
            out["mean_nll"] = nll.mean(1)
            out["last_nll"] = nll[:, -1].clone()  # not a view: it would keep all of nll
        for site in sites:
            for pool in pools:
                out[f"{site.name}/{pool}"] = _pool(values[site.name], pool, skip_first)
    return out


def _shard_arrays(parts: list[dict[str, Any]], dtype: Any) -> dict[str, np.ndarray]:
    """A shard's batches joined and copied to the host once; refuses NaN/inf."""
    import torch

    arrays = {}
    # hidden states first: an overflow there also ruins the perplexity, and the site is the news
    for k in sorted(parts[0], key=lambda k: (k.endswith("_nll"), k.endswith("/within"))):
        arr = torch.cat([p[k] for p in parts]).cpu().numpy()
        if k.endswith("_nll"):
            arr = arr.astype(np.float64)
            if not np.isfinite(arr).all():
                raise RepdispError(
                    f"NaN/inf perplexity (overflow in {dtype}?); try --dtype float32"
                )
        elif not np.isfinite(arr).all():
            site = k.split("/")[0]
            if k.endswith("/within"):  # finite states whose segment holds a zero vector give NaN
                for other in parts[0]:
                    if other.startswith(site + "/") and other != k:
                        vecs = torch.cat([p[other] for p in parts]).float().cpu().numpy()
                        zero = int((np.isfinite(vecs).all(1) & ~vecs.any(1)).sum())
                        if zero:
                            raise RepdispError(
                                f"site {site}: {zero} zero vector(s): cosine distance is "
                                "undefined for them"
                            )
                raise RepdispError(
                    f"site {site}: within-segment dispersion is undefined: a zero or NaN/inf "
                    f"hidden vector (overflow in {dtype}?); try --dtype float32 or bfloat16"
                )
            raise RepdispError(
                f"NaN/inf hidden states at site {site} (overflow in {dtype}?); "
                "try --dtype float32 or bfloat16"
            )
        elif k.endswith("/within"):
            arr = arr.astype(np.float64)
        arrays[k] = arr
    return {k: arrays[k] for k in parts[0]}  # the shard's own key order


def cache_key(
    lm: LoadedModel,
    segments: Segments,
    sites: list[str],
    pools: list[str],
    perplexity: bool,
    skip_first: int,
) -> str:
    spec = [_CACHE_VERSION, lm.identity, segments.fingerprint, sites, pools, perplexity, skip_first]
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:20]


def extract(
    lm: LoadedModel,
    segments: Segments,
    sites: str | list[str] = "final",
    pools: str | list[str] = "last",
    *,
    perplexity: bool = True,
    batch_size: int = 8,
    skip_first: int = 1,
    cache: bool | str | Path = True,
    progress: bool = True,
    shard_segments: int = 256,
    rank: int = 0,
    world_size: int = 1,
    dist: Any = None,
) -> Extraction:
    """Run the model over ``segments`` once and collect everything asked for.

    Parameters
    ----------
    lm : LoadedModel
    segments : Segments
    sites : str or list of str or list of Site
        Site names (``core.sites``): ``embed``, ``I.attn``, ``I.ffn``, ``final``, ``all``, ...,
        or sites already parsed (``lm.parse_sites``), which are not parsed again.
    pools : str or list of str or Pools
        Any of ``last``, ``mean``, ``within``, ``tokens`` (``parse_pools``).
    perplexity : bool
        Also compute each segment's mean and last-token NLL.
    batch_size, skip_first, shard_segments : int
        Batch size, leading positions left out of pooling, segments per cache shard.
    cache : bool or path
        True for ``$REPDISP_HOME/runs/KEY``, a folder path, or False for no cache.
    progress : bool
    rank, world_size : int
        Process only shards ``rank, rank + world_size, ...`` (distributed); the result then
        holds only this process's segments, in shard order (empty if it has none).
    dist : core.distributed.Dist, optional
        A process group of several processes (``rank``/``world_size`` are then taken from it):
        the shards are split as above and gathered to rank 0 (``Dist.gather_shards``), whose
        result holds every segment in order, bit-equal to one process; the others get an
        empty result (no vectors).

    Returns
    -------
    Extraction

    Examples
    --------
    >>> import numpy as np, torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from repdisp import LoadedModel, Segments, extract
    >>> cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50,
    ...                  bos_token_id=0, eos_token_id=0)
    >>> net = GPT2LMHeadModel(cfg).eval()
    >>> lm = LoadedModel(net, None, "tiny", "tiny-doc", torch.device("cpu"), torch.float32)
    >>> segs = Segments(np.arange(40).reshape(4, 10), np.arange(4), False, "toy")
    >>> ex = extract(lm, segs, "0.attn,final", "last", cache=False, progress=False)
    >>> ex.sites, ex.get("0.attn").shape
    (['0.attn', 'final'], (4, 16))
    """
    from tqdm.auto import tqdm

    site_list = resolve_sites(lm, sites)
    pool_list = list(parse_pools(pools))
    if batch_size < 1:
        raise RepdispError(f"--batch-size must be at least 1, got {batch_size}")
    if not 0 <= skip_first < segments.ids.shape[1] - 1:
        raise RepdispError(f"--skip-first {skip_first} leaves no tokens to pool")
    names = [s.name for s in site_list]
    shard_segments = max(batch_size, shard_segments // batch_size * batch_size)
    store = None
    if cache:
        key = cache_key(lm, segments, names, pool_list, perplexity, skip_first)
        folder = Path(cache) if not isinstance(cache, bool) else cache_root() / "runs" / key
        meta = {"key": key, "model": lm.identity, "source": segments.source, "sites": names}
        store = ShardStore(folder, meta | {"pools": pool_list, "segments": len(segments)})
    n = len(segments)
    n_shards = math.ceil(n / shard_segments)
    bounds = [(i * shard_segments, min(n, (i + 1) * shard_segments)) for i in range(n_shards)]
    gathered = dist is not None and dist.world_size > 1
    if gathered:
        rank, world_size = dist.rank, dist.world_size
        progress = progress and dist.is_main
    mine = range(rank, n_shards, world_size)
    total = sum(bounds[i][1] - bounds[i][0] for i in mine)
    bar = tqdm(total=total, unit="seg", disable=not progress, desc=f"extract {lm.name}")
    computed = [0]

    def shard(i: int) -> dict[str, np.ndarray]:
        rows = bounds[i]
        arrays = store.load(i, rows) if store else None
        if arrays is not None:
            bar.update(rows[1] - rows[0])
            return arrays
        parts = []
        for b in range(*rows, batch_size):
            ids = segments.ids[b : min(b + batch_size, rows[1])]
            parts.append(_forward_batch(lm, ids, site_list, pool_list, perplexity, skip_first))
            bar.update(len(ids))
        arrays = _shard_arrays(parts, lm.dtype)
        computed[0] += rows[1] - rows[0]
        del parts
        if store:
            store.save(i, arrays, rows)
        return arrays

    try:
        if gathered:  # round by round to rank 0, which puts the rows in segment order
            merged = dist.gather_shards(shard, bounds, lm.device)
        else:
            merged = {}  # allocated once from the first shard, then filled
            at = 0
            for i in mine:
                arrays = shard(i)
                if not merged:
                    merged = {
                        k: np.empty((total, *v.shape[1:]), v.dtype) for k, v in arrays.items()
                    }
                for k, v in arrays.items():
                    merged[k][at : at + len(v)] = v
                at += bounds[i][1] - bounds[i][0]
    finally:
        bar.close()
    return Extraction(
        sites=names,
        pools=pool_list,
        vectors={k: v for k, v in merged.items() if "/" in k},
        mean_nll=merged.get("mean_nll"),
        last_nll=merged.get("last_nll"),
        requested={s.name: s.requested for s in site_list if s.requested},
        computed=computed[0],
    )
