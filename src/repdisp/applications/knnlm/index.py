"""FAISS indexes over datastore keys: exact ``IndexFlatL2`` for small stores, IVF-PQ (64-byte codes,
as in Khandelwal et al.) for large ones; cloned onto the GPUs when GPU FAISS sees any.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from ...core.errors import RepdispError

FLAT_MAX_KEYS = 1_000_000  # auto index: exact search up to this many keys, IVF-PQ above
_ADD_CHUNK = 65_536


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise RepdispError(
            "kNN-LM needs FAISS: pip install 'repdisp[knnlm]' (faiss-cpu), or install faiss-gpu"
        ) from None
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
