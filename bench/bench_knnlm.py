"""kNN-LM benchmark: datastore build throughput (and how much of it is not the forward pass),
search throughput at k=1024 on a flat and an IVF-PQ index, and memory.

    OMP_NUM_THREADS=1 python bench/bench_knnlm.py [--quick] [--keys 1000000] [--out DIR]

Build: the bundled SmolLM2-135M over python-docs, keys at the last block's h_att and h_ffn.
Search: random float16 keys (d=576, as SmolLM2), 256 queries drawn near stored keys.
Rates are given per wall second and per CPU-second of this process (stable on a shared machine).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from repdisp.applications.knnlm import build_datastore, build_index
from repdisp.core.corpus import load_texts, token_stream
from repdisp.io.results import write_json


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_build(n_tokens: int) -> dict:
    from repdisp.core.models import load_model

    lm = load_model("smollm2-135m", "cpu", "float32")
    tokens = token_stream(lm.tokenizer, load_texts("python-docs"))[:n_tokens]
    cpu = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        r = build_datastore(
            lm,
            tokens,
            tmp,
            sites="-1.attn,-1.ffn",
            context=256,
            stride=256,
            batch_size=4,
            progress=False,
        )
    cpu = time.process_time() - cpu
    index_s = sum(i["add_seconds"] + i["train_seconds"] for i in r.index.values())
    return {
        "model": lm.name,
        "sites": r.sites,
        "keys": r.n_keys,
        "seconds": r.seconds,
        "keys_per_second": r.tokens_per_second,
        "keys_per_cpu_second": r.n_keys / cpu,
        "forward_seconds": r.forward_seconds,
        "write_seconds": r.write_seconds,
        "index_seconds": index_s,
        "overhead_vs_forward": (r.write_seconds + index_s) / r.forward_seconds,
        "index_add_vs_forward": index_s / r.forward_seconds,
    }


def random_keys(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keys = np.empty((n, d), dtype=np.float16)
    for s in range(0, n, 100_000):
        keys[s : s + 100_000] = rng.standard_normal((min(100_000, n - s), d), dtype=np.float32)
    return keys


def bench_search(n_flat: int, n_ivf: int, d: int, k: int, n_queries: int) -> dict:
    """Flat search over ``n_flat`` random keys, IVF-PQ over the first ``n_ivf`` of them. Each query
    is a stored key plus noise (σ=0.5), so that key is its true nearest neighbour: recall@1."""
    import faiss

    keys = random_keys(n_flat, d)
    rng = np.random.default_rng(1)
    rows = rng.choice(min(n_flat, n_ivf), n_queries, replace=False)
    noise = 0.5 * rng.standard_normal((n_queries, d), dtype=np.float32)
    queries = keys[rows].astype(np.float32) + noise
    out = {"dim": d, "k": k, "queries": n_queries, "key_file_gib": keys.nbytes / 2**30}
    for kind, n, kw in (
        ("flat", n_flat, {}),
        ("ivfpq", n_ivf, {"nlist": 1024, "train_size": 40_000}),
    ):
        index, info = build_index(keys[:n], kind, **kw)
        if kind == "ivfpq":
            index.nprobe = 32
        t0, cpu = time.perf_counter(), time.process_time()
        _, ids = index.search(queries, k)
        secs, cpu = time.perf_counter() - t0, time.process_time() - cpu
        out[kind] = {
            "keys": n,
            "queries_per_second": n_queries / secs,
            "queries_per_cpu_second": n_queries / cpu,
            "recall_at_1": float((ids[:, 0] == rows).mean()),
            "index_gib": (faiss.serialize_index(index).nbytes if kind == "ivfpq" else n * d * 4)
            / 2**30,
            "train_seconds": info["train_seconds"],
            "add_keys_per_second": n / info["add_seconds"],
            "max_rss_gib": rss_gib(),
        }
        del index
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200k/50k keys, 1k build tokens")
    p.add_argument("--keys", type=int, help="keys of the flat search benchmark (1M; quick 200k)")
    p.add_argument("--ivf-keys", type=int, help="keys of the IVF-PQ benchmark (200k; quick 50k)")
    p.add_argument(
        "--build-tokens", type=int, help="tokens for the build benchmark (4096; quick 1024)"
    )
    p.add_argument("--out", default="bench_knnlm_out")
    a = p.parse_args()
    n = a.keys or (200_000 if a.quick else 1_000_000)
    n_ivf = min(n, a.ivf_keys or (50_000 if a.quick else 200_000))
    n_build = a.build_tokens or (1024 if a.quick else 4096)
    t0 = time.perf_counter()
    result = {"build": bench_build(n_build), "search": bench_search(n, n_ivf, 576, 1024, 256)}
    result["seconds"] = time.perf_counter() - t0
    b, s = result["build"], result["search"]
    print(
        f"build {b['model']} {b['sites']}: {b['keys']} keys, {b['keys_per_second']:.0f} keys/s "
        f"({b['keys_per_cpu_second']:.0f} per CPU-second); "
        f"write+index = {100 * b['overhead_vs_forward']:.1f}% of forward (index {100 * b['index_add_vs_forward']:.2f}%)"
    )
    for kind in ("flat", "ivfpq"):
        r = s[kind]
        print(
            f"search {kind} {r['keys']} keys d={s['dim']} k={s['k']}: "
            f"{r['queries_per_second']:.1f} q/s ({r['queries_per_cpu_second']:.1f} per CPU-s), recall@1 {r['recall_at_1']:.2f}, "
            f"index {r['index_gib']:.3f} GiB, train {r['train_seconds']:.1f} s, "
            f"add {r['add_keys_per_second']:.0f} keys/s, max RSS {r['max_rss_gib']:.2f} GiB"
        )
    print(f"total {result['seconds']:.0f} s")
    write_json(Path(a.out) / "bench_knnlm.json", result)


if __name__ == "__main__":
    main()
