"""Throughput of repdisp.analyses.ngrams.mine_ngrams (vectorised rolling hash) vs a Python dict of tuples.

Stream: uniform random token ids from a 50,000-token vocabulary with 1,000 planted 10-token
phrases, each repeated 100 times (so there are real frequent n-grams to find and verify).

    python bench/bench_ngrams.py [--tokens 10000000] [--naive-tokens 1000000] [--n 10]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

from repdisp.analyses.ngrams import mine_ngrams


def planted_stream(n_tokens: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 50_000, n_tokens)
    phrases = rng.integers(0, 50_000, (1_000, n))
    starts = rng.choice(n_tokens // n, size=min(100_000, n_tokens // n // 2), replace=False) * n
    x[starts[:, None] + np.arange(n)] = phrases[np.arange(len(starts)) % len(phrases)]
    return x


def naive(x: np.ndarray, n: int, min_count: int) -> dict[tuple[int, ...], list[int]]:
    d: dict[tuple[int, ...], list[int]] = defaultdict(list)
    seq = x.tolist()
    for i in range(len(seq) - n + 1):
        d[tuple(seq[i : i + n])].append(i)
    return {k: v for k, v in d.items() if len(v) >= min_count}


def timed(f, *args):
    """Result, wall seconds and CPU seconds of this process (the fair number on a shared machine)."""
    t, c = time.perf_counter(), time.process_time()
    out = f(*args)
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=10_000_000)
    ap.add_argument("--naive-tokens", type=int, default=1_000_000)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--min-count", type=int, default=50)
    a = ap.parse_args()

    x = planted_stream(a.tokens, a.n)
    r, t, c = timed(mine_ngrams, x, a.n, a.min_count)
    print(
        f"mine_ngrams: {a.tokens:,} tokens, n={a.n}, min_count={a.min_count}: {len(r)} n-grams; "
        f"wall {t:.2f} s = {a.tokens / t / 1e6:.2f} M tokens/s; CPU {c:.2f} s = "
        f"{a.tokens / c / 1e6:.2f} M tokens/s"
    )
    y = planted_stream(a.naive_tokens, a.n, seed=1)
    m = max(2, a.min_count * a.naive_tokens // a.tokens)
    fast, tf, cf = timed(mine_ngrams, y, a.n, m)
    ref, tn, cn = timed(naive, y, a.n, m)
    assert {k: list(v) for k, v in fast.as_dict().items()} == ref, "results differ"
    print(
        f"{a.naive_tokens:,} tokens, min_count={m}: mine_ngrams wall {tf:.3f} s (CPU {cf:.3f}), "
        f"naive dict of tuples wall {tn:.3f} s (CPU {cn:.3f}) -> {tn / tf:.1f}x faster (wall), "
        f"{cn / cf:.1f}x (CPU); identical {len(ref)} n-grams and positions"
    )


if __name__ == "__main__":
    main()
