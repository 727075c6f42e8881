"""kNN-LM (Khandelwal et al., 2020) with the key read at any site of the model.

A datastore maps the site's vector at every position of a training text (the key) to the next
token (the value). At evaluation the same site's vector is the query; its k nearest keys give

    p_kNN(y) ∝ Σ_{neighbours j with value y} exp(-‖q - k_j‖² / T)
    p(y)     = λ·p_kNN(y) + (1 - λ)·p_LM(y)

computed in log space (logsumexp), so a target that no neighbour holds costs log(1 - λ) only.

Text is read in sliding windows of ``context`` tokens moved by ``stride``; each window emits keys
(or scores) only for the targets no earlier window covered, so every target after the first is
predicted once, with at least ``context - stride`` tokens of context.

Datastore folder: ``values.npy`` (int32, n) and ``keys.SITE.npy`` (float16, n × d) as memmaps,
filled shard by shard (a shard = a run of windows); ``manifest.json`` (written atomically) records
each finished shard's row checksums, so an interrupted build resumes at the first missing shard.
``index.SITE.faiss`` is an exact ``IndexFlatL2`` for small stores, IVF-PQ for large ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import logsumexp

from ..core.corpus import Segments, bos_id, load_texts, token_stream
from ..core.errors import RepdispError
from ..core.extract import forward_sites
from ..core.models import LoadedModel
from ..core.shards import atomic_write
from ..core.sites import Site, blocks_of, parse_sites
from ..core.stats import mean_ci
from .knn_keys import KeyProfile, profile_keys

_VERSION = 1
FLAT_MAX_KEYS = 1_000_000  # auto index: exact search up to this many keys, IVF-PQ above
_ADD_CHUNK = 65_536


# --- the kNN distribution and the interpolation -------------------------------------------------


def knn_log_prob(
    dist: np.ndarray, neighbour_values: np.ndarray, targets: np.ndarray, temperature: float
) -> np.ndarray:
    """log p_kNN(target) per query from (Q, k) squared distances and the neighbours' token ids.

    Softmax over -dist/T, summed over neighbours holding the target; -inf where none does.
    Missing neighbours (FAISS id -1, value < 0) get no weight."""
    logits = -np.asarray(dist, dtype=np.float64) / temperature
    logits = np.where(neighbour_values < 0, -np.inf, logits)
    hit = np.where(neighbour_values == np.asarray(targets)[:, None], logits, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        return logsumexp(hit, axis=1) - logsumexp(logits, axis=1)


def interpolate(log_p_knn: np.ndarray, log_p_lm: np.ndarray, lmbda: float) -> np.ndarray:
    """log(λ·p_kNN + (1-λ)·p_LM), stable for p_kNN = 0 and for λ in {0, 1}."""
    if not 0.0 <= lmbda <= 1.0:
        raise RepdispError(f"--lmbda must be in [0, 1], got {lmbda}")
    with np.errstate(divide="ignore"):
        return np.logaddexp(np.log(lmbda) + log_p_knn, np.log1p(-lmbda) + log_p_lm)


def perplexity(log_p: np.ndarray) -> float:
    return float(np.exp(-np.mean(log_p)))


# --- text and windows ---------------------------------------------------------------------------


def load_tokens(lm: LoadedModel, sources: list[str], **load_kwargs: Any) -> np.ndarray:
    """Token stream of one or more sources, each ``SOURCE`` or ``SOURCE@START:END`` (a token range
    of that source's stream), joined by EOS."""
    parts: list[np.ndarray] = []
    eos = lm.tokenizer.eos_token_id
    for spec in sources:
        source, start, end = spec, None, None
        head, sep, rng = spec.rpartition("@")
        if sep and ":" in rng and all(p.isdigit() or not p for p in rng.split(":", 1)):
            source = head
            a, b = rng.split(":", 1)
            start, end = (int(a) if a else None), (int(b) if b else None)
        stream = token_stream(lm.tokenizer, load_texts(source, **load_kwargs))[start:end]
        if parts and eos is not None:
            parts.append(np.array([eos], dtype=np.int64))
        parts.append(stream)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if len(tokens) < 2:
        raise RepdispError(f"data {', '.join(sources)} holds fewer than 2 tokens")
    return tokens


def plan_windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows ``(begin, end, first_new)`` over a stream: the window feeds tokens [begin, end)
    and scores the targets [first_new, end), each predicted from the token before it."""
    if context < 2:
        raise RepdispError(f"--context must be at least 2 tokens, got {context}")
    if not 1 <= stride <= context:
        raise RepdispError(f"--stride must be in [1, --context={context}], got {stride}")
    windows, covered, begin = [], 1, 0
    while True:
        end = min(begin + context, n_tokens)
        if end > max(covered, begin + 1):
            windows.append((begin, end, max(covered, begin + 1)))
        covered = max(covered, end)
        if end >= n_tokens:
            return windows
        begin += stride


def _batches(windows: list[tuple[int, int, int]], batch_size: int) -> list[list[int]]:
    """Consecutive window indices grouped into batches of equal window length."""
    out: list[list[int]] = []
    for i, (b, e, _) in enumerate(windows):
        if (
            out
            and len(out[-1]) < batch_size
            and windows[out[-1][0]][1] - windows[out[-1][0]][0] == e - b
        ):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _window_batch(
    tokens: np.ndarray, windows: list[tuple[int, int, int]], bos: int | None
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Input ids of equal-length windows and, per window, the position range of its new targets
    (position j predicts input token j + 1)."""
    prefix = [] if bos is None else [bos]
    ids = np.stack([np.concatenate([prefix, tokens[b:e]]).astype(np.int64) for b, e, _ in windows])
    p = len(prefix)
    return ids, [(n - b + p - 1, e - b + p - 1) for b, e, n in windows]


# --- FAISS --------------------------------------------------------------------------------------


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise RepdispError("kNN-LM needs FAISS: pip install faiss-cpu (or faiss-gpu)") from None
    return faiss


def _on_gpu(index: Any) -> Any:
    """The index cloned onto all GPUs when GPU FAISS sees any, else the index itself."""
    faiss = _faiss()
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        options = faiss.GpuMultipleClonerOptions()
        options.useFloat16 = True  # fp16 lookup tables: needed for 64-byte PQ codes on GPU
        return faiss.index_cpu_to_all_gpus(index, options)
    return index


def _pq_subquantizers(d: int) -> int:
    """Bytes per PQ code: 64 as in Khandelwal et al. when d allows, else the largest divisor."""
    return next(m for m in (64, 48, 32, 16, 8, 4, 2, 1) if d % m == 0)


def build_index(
    keys: np.ndarray,
    kind: str = "auto",
    nlist: int | None = None,
    train_size: int = 262_144,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """A FAISS index over float16 keys (added in float32 chunks) and a summary of how it was made.

    ``auto``: exact ``IndexFlatL2`` up to FLAT_MAX_KEYS keys, else IVF-PQ (nlist ≈ 4·√n lists,
    at most train_size/39; 64-byte codes) trained on a random sample of ``train_size`` keys.
    Training and adding run on the GPUs when GPU FAISS sees any."""
    faiss = _faiss()
    n, d = keys.shape
    if kind == "auto":
        kind = "flat" if n <= FLAT_MAX_KEYS else "ivfpq"
    info: dict[str, Any] = {"kind": kind, "n_keys": n, "dim": d, "train_seconds": 0.0}
    if kind not in ("flat", "ivfpq"):
        raise RepdispError(f"unknown index {kind!r}; choose auto, flat or ivfpq")
    index = faiss.IndexFlatL2(d)
    if kind == "ivfpq":
        rows = np.sort(np.random.default_rng(seed).choice(n, min(n, train_size), replace=False))
        lists = 2 ** round(math.log2(4 * math.sqrt(n)))
        nlist = nlist or max(1, min(len(rows) // 39, lists))
        m = _pq_subquantizers(d)
        index = faiss.IndexIVFPQ(index, d, nlist, m, 8)
        info.update(nlist=nlist, pq_bytes=m, train_keys=len(rows))
    work = _on_gpu(index)
    if kind == "ivfpq":
        t0 = time.perf_counter()
        work.train(np.ascontiguousarray(keys[rows], dtype=np.float32))
        info["train_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(0, n, _ADD_CHUNK):
        work.add(np.ascontiguousarray(keys[s : s + _ADD_CHUNK], dtype=np.float32))
    index = index if work is index else faiss.index_gpu_to_cpu(work)
    info["add_seconds"] = time.perf_counter() - t0
    return index, info


# --- the datastore ------------------------------------------------------------------------------


def _rows_sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _site_file(site: str) -> str:
    return site.replace("/", "_")


@dataclass
class Datastore:
    """An opened datastore folder: memmapped keys per site, values, and the manifest."""

    folder: Path
    manifest: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, folder: str | Path) -> Datastore:
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.exists():
            raise RepdispError(f"{folder} is not a datastore (no manifest.json)")
        manifest = json.loads(path.read_text())
        if not manifest.get("complete"):
            raise RepdispError(f"datastore {folder} is unfinished; rerun `repdisp knnlm build`")
        return cls(folder, manifest)

    @property
    def meta(self) -> dict[str, Any]:
        return self.manifest["meta"]

    @property
    def sites(self) -> list[str]:
        return list(self.meta["sites"])

    def keys(self, site: str) -> np.ndarray:
        if site not in self.sites:
            raise RepdispError(
                f"datastore {self.folder} has no keys for site {site}; has {self.sites}"
            )
        return np.load(self.folder / f"keys.{_site_file(site)}.npy", mmap_mode="r")

    def values(self) -> np.ndarray:
        return np.load(self.folder / "values.npy", mmap_mode="r")

    def index(self, site: str, nprobe: int = 32) -> Any:
        faiss = _faiss()
        index = faiss.read_index(str(self.folder / f"index.{_site_file(site)}.faiss"))
        if hasattr(index, "nprobe"):
            index.nprobe = nprobe
        return _on_gpu(index)


@dataclass
class BuildReport:
    folder: str
    n_tokens: int
    n_keys: int
    sites: list[str]
    shards_computed: int
    shards_reused: int
    forward_seconds: float
    write_seconds: float
    index: dict[str, dict[str, Any]]
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.n_keys / max(self.seconds, 1e-9)


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1).encode()
    atomic_write(folder / "manifest.json", lambda f: f.write(text))


def _open_rows(path: Path, shape: tuple[int, ...], dtype: Any, fresh: bool) -> np.ndarray:
    if fresh or not path.exists():
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    arr = np.load(path, mmap_mode="r+")
    if arr.shape != shape or arr.dtype != dtype:
        raise RepdispError(f"{path} has shape {arr.shape} {arr.dtype}, expected {shape} {dtype}")
    return arr


def build_datastore(
    lm: LoadedModel,
    tokens: np.ndarray,
    folder: str | Path,
    sites: str | list[str] = "-1.ffn",
    source: str = "",
    context: int = 512,
    stride: int = 256,
    batch_size: int = 4,
    shard_windows: int = 64,
    index: str = "auto",
    progress: bool = True,
) -> BuildReport:
    """Fill (or resume) a datastore for ``sites`` over ``tokens`` in one forward pass, then index it."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    site_list = parse_sites(sites, len(blocks_of(lm.model)))
    names = [s.name for s in site_list]
    windows = plan_windows(len(tokens), context, stride)
    offsets = np.cumsum([0] + [e - n for _, e, n in windows])
    n_keys, dim = int(offsets[-1]), int(lm.model.config.hidden_size)
    bos = bos_id(lm.tokenizer)
    meta = {
        "version": _VERSION,
        "model": lm.name,
        "identity": lm.identity,
        "source": source,
        "tokens_sha256": _rows_sha(tokens.astype(np.int64)),
        "n_tokens": len(tokens),
        "context": context,
        "stride": stride,
        "bos": bos,
        "sites": names,
        "n_keys": n_keys,
        "dim": dim,
        "shard_windows": shard_windows,
    }
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else None
    if manifest is not None and manifest["meta"] != meta:
        raise RepdispError(
            f"{folder} holds a different datastore ({manifest['meta'].get('model')}, "
            f"{manifest['meta'].get('sites')}); choose another --out or delete it"
        )
    fresh = manifest is None
    manifest = manifest or {"meta": meta, "shards": {}, "index": {}, "complete": False}
    values = _open_rows(folder / "values.npy", (n_keys,), np.int32, fresh)
    keys = {
        s: _open_rows(folder / f"keys.{_site_file(s)}.npy", (n_keys, dim), np.float16, fresh)
        for s in names
    }
    shards = [
        list(range(i, min(i + shard_windows, len(windows))))
        for i in range(0, len(windows), shard_windows)
    ]
    computed = reused = 0
    fwd_s = write_s = 0.0
    bar = tqdm(total=n_keys, unit="key", disable=not progress, desc=f"datastore {lm.name}")
    try:
        for i, shard in enumerate(shards):
            lo, hi = int(offsets[shard[0]]), int(offsets[shard[-1] + 1])
            done = manifest["shards"].get(str(i))
            if (
                done
                and done.get("values") == _rows_sha(values[lo:hi])
                and all(done.get(s) == _rows_sha(keys[s][lo:hi]) for s in names)
            ):
                reused += 1
                bar.update(hi - lo)
                continue
            fs, ws = _fill_shard(
                lm, tokens, windows, shard, offsets, site_list, bos, batch_size, values, keys
            )
            fwd_s, write_s = fwd_s + fs, write_s + ws
            t0 = time.perf_counter()
            for arr in (values, *keys.values()):
                arr.flush()
            manifest["shards"][str(i)] = {"values": _rows_sha(values[lo:hi])} | {
                s: _rows_sha(keys[s][lo:hi]) for s in names
            }
            _write_manifest(folder, manifest)
            write_s += time.perf_counter() - t0
            computed += 1
            bar.update(hi - lo)
    finally:
        bar.close()
    for s in names:
        if s not in manifest["index"]:
            faiss = _faiss()
            idx, info = build_index(keys[s], index)
            target = folder / f"index.{_site_file(s)}.faiss"
            tmp = target.with_name(f".{target.name}.tmp")
            faiss.write_index(idx, str(tmp))
            os.replace(tmp, target)
            manifest["index"][s] = info
            _write_manifest(folder, manifest)
    manifest["complete"] = True
    _write_manifest(folder, manifest)
    return BuildReport(
        str(folder),
        len(tokens),
        n_keys,
        names,
        computed,
        reused,
        fwd_s,
        write_s,
        manifest["index"],
        time.perf_counter() - t_start,
    )


def _fill_shard(
    lm: LoadedModel,
    tokens: np.ndarray,
    windows: list[tuple[int, int, int]],
    shard: list[int],
    offsets: np.ndarray,
    sites: list[Site],
    bos: int | None,
    batch_size: int,
    values: np.ndarray,
    keys: dict[str, np.ndarray],
) -> tuple[float, float]:
    """Run the shard's windows and write their keys and values; returns (forward s, write s)."""
    import torch

    fwd = write = 0.0
    for batch in _batches([windows[i] for i in shard], batch_size):
        wins = [windows[shard[j]] for j in batch]
        ids, spans = _window_batch(tokens, wins, bos)
        t0 = time.perf_counter()
        states, _ = forward_sites(lm, ids, sites, perplexity=False)
        t1 = time.perf_counter()
        for j, (lo, hi) in zip(batch, spans, strict=True):
            row = int(offsets[shard[j]])
            _, e, n = windows[shard[j]]
            values[row : row + hi - lo] = tokens[n:e]
            for s in sites:
                keys[s.name][row : row + hi - lo] = (
                    states[s.name][j - batch[0], lo:hi].to(torch.float16).cpu().numpy()
                )
        fwd, write = fwd + t1 - t0, write + time.perf_counter() - t1
    return fwd, write


# --- evaluation ---------------------------------------------------------------------------------


@dataclass
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


@dataclass
class KnnEval:
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
        return {k: v for k, v in asdict(self).items() if k != "log_p"}

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


def evaluate(
    lm: LoadedModel,
    datastore: Datastore,
    tokens: np.ndarray,
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

    The grids (λ × T) are scored on the same text; the neighbours are searched once."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    if datastore.meta["identity"] != lm.identity:
        raise RepdispError(
            f"datastore {datastore.folder} was built with {datastore.meta['model']}, not {lm.name}"
        )
    if temperature <= 0 or any(t <= 0 for t in temperature_grid or []):
        raise RepdispError("--temperature must be positive")
    names = sites or datastore.sites
    site_list = parse_sites(names, len(blocks_of(lm.model)))
    names = [s.name for s in site_list]
    indexes = {s: datastore.index(s, nprobe) for s in names}
    store_values = np.asarray(datastore.values())
    temps = sorted({temperature, *(temperature_grid or [])})
    windows = plan_windows(len(tokens), context, stride)
    bos = bos_id(lm.tokenizer)
    lp_lm: list[np.ndarray] = []
    lp_knn: dict[str, list[np.ndarray]] = {s: [] for s in names}
    covered: dict[str, int] = dict.fromkeys(names, 0)
    fwd_s = search_s = 0.0
    bar = tqdm(total=len(windows), unit="win", disable=not progress, desc=f"kNN-LM eval {lm.name}")
    for batch in _batches(windows, batch_size):
        wins = [windows[i] for i in batch]
        ids, spans = _window_batch(tokens, wins, bos)
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
                s,
                datastore.meta["n_keys"],
                datastore.manifest["index"][s]["kind"],
                chosen["ppl"],
                best["ppl"],
                best["lmbda"],
                best["temperature"],
                covered[s] / len(base),
                grid,
            )
        )
    return KnnEval(
        lm.name,
        str(datastore.folder),
        source,
        len(tokens),
        len(base),
        context,
        stride,
        k,
        lmbda,
        temperature,
        perplexity(base),
        uni_ppl,
        uni_lmbda,
        results,
        fwd_s,
        search_s,
        time.perf_counter() - t_start,
        log_p,
    )


def plot_eval(result: KnnEval) -> Any:
    """kNN-LM perplexity vs λ per site (at the best temperature), base perplexity dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
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
    ax.set_xlabel("λ")
    ax.set_ylabel("perplexity")
    ax.set_title(f"kNN-LM {result.model}: {result.n_targets} targets, k={result.k}")
    ax.legend(fontsize=7)
    return fig


# --- selection: does the highest-dispersion key win? --------------------------------------------


@dataclass
class SelectReport:
    model: str
    recommended: str  # highest dispersion at the largest N
    winner: str  # lowest kNN-LM perplexity (best over the λ × T grid)
    picked_winner: bool
    profile: KeyProfile
    evaluation: KnnEval
    build: BuildReport
    # winner minus runner-up: mean log p per target (nats) and its 95% bootstrap CI over targets
    margin_nats: float | None = None
    margin_ci: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "evaluation"}
        return {**out, "evaluation": self.evaluation.to_dict()}

    def rows(self) -> list[dict[str, Any]]:
        n = self.profile.chunks[-1]
        return [
            {
                "site": s.site,
                "dispersion": self.profile.row(s.site, n).mean,
                "dispersion_std": self.profile.row(s.site, n).std,
                "base_ppl": self.evaluation.base_ppl,
                "knn_ppl": s.knn_ppl,
                "best_ppl": s.best_ppl,
                "best_lmbda": s.best_lmbda,
                "best_temperature": s.best_temperature,
                "recommended": s.site == self.recommended,
                "winner": s.site == self.winner,
            }
            for s in self.evaluation.sites
        ]

    def table(self) -> str:
        ev = self.evaluation
        lines = [
            f"model {self.model} | datastore {self.build.n_keys} keys | eval {ev.n_targets} targets | "
            f"k={ev.k} λ={ev.lmbda} T={ev.temperature} | dispersion over N={self.profile.chunks[-1]} "
            f"chunks × {self.profile.seeds} seeds",
            f"{'site':<10}{'dispersion':>16}{'base ppl':>10}{'kNN-LM ppl':>12}{'best ppl':>10}  best λ, T",
        ]
        for r in self.rows():
            mark = (" <- highest dispersion" if r["recommended"] else "") + (
                " <- best kNN-LM" if r["winner"] else ""
            )
            lines.append(
                f"{r['site']:<10}{r['dispersion']:>9.4f}±{r['dispersion_std']:.4f}{r['base_ppl']:>10.3f}"
                f"{r['knn_ppl']:>12.3f}{r['best_ppl']:>10.3f}  {r['best_lmbda']:g}, {r['best_temperature']:g}{mark}"
            )
        lines.append(
            f"control, LM + datastore unigram (no retrieval): {ev.unigram_ppl:.3f} at λ={ev.unigram_lmbda:g}"
        )
        verdict = "yes" if self.picked_winner else "no"
        lines.append(f"highest-dispersion site gave the best kNN-LM perplexity: {verdict}")
        if self.margin_ci is not None:
            lines.append(
                f"winner vs runner-up: {self.margin_nats:+.4f} nats/target, 95% bootstrap CI "
                f"[{self.margin_ci[0]:+.4f}, {self.margin_ci[1]:+.4f}] (targets resampled; λ, T tuned on them)"
            )
        return "\n".join(lines)


def chunk_windows(tokens: np.ndarray, chunk_len: int, bos: int | None, source: str) -> Segments:
    """All non-overlapping ``chunk_len`` windows of a token stream, as Segments (BOS prepended)."""
    n = len(tokens) // chunk_len
    if n < 2:
        raise RepdispError(f"{source}: fewer than 2 chunks of {chunk_len} tokens")
    ids = tokens[: n * chunk_len].reshape(n, chunk_len).astype(np.int64)
    if bos is not None:
        ids = np.concatenate([np.full((n, 1), bos, dtype=np.int64), ids], axis=1)
    return Segments(ids, np.arange(n), bos is not None, source)


def select_key(
    lm: LoadedModel,
    train: np.ndarray,
    evaluation: np.ndarray,
    folder: str | Path,
    sites: str = "final-block",
    chunks: int = 100,
    seeds: int = 5,
    chunk_len: int = 256,
    train_source: str = "",
    eval_source: str = "",
    build_kwargs: dict[str, Any] | None = None,
    eval_kwargs: dict[str, Any] | None = None,
    cache: bool | str | Path = True,
    progress: bool = True,
) -> SelectReport:
    """Dispersion profile on the training text, one datastore with every candidate site (one
    forward pass), one evaluation pass, and whether the highest-dispersion site won.
    ``cache`` is the profile's extraction cache (see ``repdisp.extract``)."""
    windows = chunk_windows(train, chunk_len, bos_id(lm.tokenizer), train_source)
    profile = profile_keys(lm, windows, [chunks], seeds, sites, cache=cache, progress=progress)
    build = build_datastore(
        lm, train, folder, profile.sites, train_source, progress=progress, **(build_kwargs or {})
    )
    result = evaluate(
        lm,
        Datastore.open(folder),
        evaluation,
        eval_source,
        progress=progress,
        **(eval_kwargs or {}),
    )
    ranked = sorted(result.sites, key=lambda s: s.best_ppl)
    winner = ranked[0].site
    report = SelectReport(
        lm.name, profile.recommended, winner, winner == profile.recommended, profile, result, build
    )
    if len(ranked) > 1:
        diff = result.log_p[winner] - result.log_p[ranked[1].site]
        report.margin_nats, report.margin_ci = float(diff.mean()), mean_ci(diff, 2000, 0)
    return report
