"""kNN-LM benchmark: datastore build throughput (and how much of it is not the forward pass),
search throughput at k=1024 on a flat and an IVF-PQ index, and memory.

    OMP_NUM_THREADS=1 python bench/bench_knnlm.py [--quick] [--keys 1000000] [--out DIR]

Build: the bundled SmolLM2-135M over python-docs, keys at the last block's h_att and h_ffn.
Search: random float16 keys (d=576, as SmolLM2), 256 queries drawn near stored keys.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from repdisp.corpus import load_texts, token_stream
from repdisp.knnlm import build_datastore, build_index
from repdisp.report_io import write_json


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_build(n_tokens: int) -> dict:
    from repdisp.models import load_model

    lm = load_model("smollm2-135m", "cpu", "float32")
    tokens = token_stream(lm.tokenizer, load_texts("python-docs"))[:n_tokens]
    with tempfile.TemporaryDirectory() as tmp:
        r = build_datastore(
            lm, tokens, tmp, "-1.attn,-1.ffn", context=256, stride=256, batch_size=4, progress=False
        )
    index_s = sum(i["add_seconds"] + i["train_seconds"] for i in r.index.values())
    return {
        "model": lm.name,
        "sites": r.sites,
        "keys": r.n_keys,
        "seconds": r.seconds,
        "keys_per_second": r.tokens_per_second,
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


def bench_search(n: int, d: int, k: int, n_queries: int) -> dict:
    import faiss

    keys = random_keys(n, d)
    rng = np.random.default_rng(1)
    rows = rng.choice(n, n_queries, replace=False)
    queries = keys[rows].astype(np.float32) + 0.5 * rng.standard_normal(
        (n_queries, d), dtype=np.float32
    )
    out = {"keys": n, "dim": d, "k": k, "queries": n_queries, "key_file_gib": keys.nbytes / 2**30}
    exact = None
    for kind, kw in (("flat", {}), ("ivfpq", {"nlist": 1024, "train_size": 65_536})):
        index, info = build_index(keys, kind, **kw)
        if kind == "ivfpq":
            index.nprobe = 32
        t0 = time.perf_counter()
        _, ids = index.search(queries, k)
        secs = time.perf_counter() - t0
        row = {
            "queries_per_second": n_queries / secs,
            "index_gib": faiss.serialize_index(index).nbytes / 2**30,
            "train_seconds": info["train_seconds"],
            "add_seconds": info["add_seconds"],
            "max_rss_gib": rss_gib(),
        }
        if exact is None:
            exact = ids
        else:
            row["recall_at_1"] = float((ids[:, 0] == exact[:, 0]).mean())
            row["recall_of_k"] = float(
                np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(ids, exact, strict=True)])
            )
        out[kind] = row
        del index
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200k keys, 1k build tokens")
    p.add_argument("--keys", type=int, help="keys in the search benchmark (1M; quick 200k)")
    p.add_argument(
        "--build-tokens", type=int, help="tokens for the build benchmark (4096; quick 1024)"
    )
    p.add_argument("--out", default="bench_knnlm_out")
    a = p.parse_args()
    n = a.keys or (200_000 if a.quick else 1_000_000)
    n_build = a.build_tokens or (1024 if a.quick else 4096)
    t0 = time.perf_counter()
    result = {"build": bench_build(n_build), "search": bench_search(n, 576, 1024, 256)}
    result["seconds"] = time.perf_counter() - t0
    b, s = result["build"], result["search"]
    print(
        f"build {b['model']} {b['sites']}: {b['keys']} keys, {b['keys_per_second']:.0f} keys/s; "
        f"write+index = {100 * b['overhead_vs_forward']:.1f}% of forward (index {100 * b['index_add_vs_forward']:.2f}%)"
    )
    for kind in ("flat", "ivfpq"):
        r = s[kind]
        extra = (
            f", recall@1 {r['recall_at_1']:.2f}, overlap of top-k {r['recall_of_k']:.2f}"
            if "recall_at_1" in r
            else ""
        )
        print(
            f"search {kind} {s['keys']} keys d={s['dim']} k={s['k']}: {r['queries_per_second']:.1f} q/s, "
            f"index {r['index_gib']:.3f} GiB, train {r['train_seconds']:.1f} s, add {r['add_seconds']:.1f} s, "
            f"max RSS {r['max_rss_gib']:.2f} GiB{extra}"
        )
    print(f"total {result['seconds']:.0f} s")
    write_json(Path(a.out) / "bench_knnlm.json", result)


if __name__ == "__main__":
    main()
