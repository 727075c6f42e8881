"""Speed and memory of the exact O(N·d) dispersion against the cheapest and the naive baselines.

    python bench/bench_geometry.py [--quick]

1. dispersion(X) vs one pass X.sum(0), N=100,000 x d=2048 float32 (the floor: read X once).
2. dispersion(X) vs building the full N×N cosine matrix (float32 matmul), N=8,000 x d=2048.
3. Peak extra memory of dispersion(X) (tracemalloc): O(block·d), independent of N.
4. Exactness vs a float64 brute force on small data.
Ratios are measured side by side in one run (median of interleaved repeats); absolute times
depend on the machine and its load, so nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np

from repdisp.core.geometry import dispersion


def median_time(fn, repeats: int) -> tuple[float, float]:
    """Median seconds of ``fn()`` and its (last) value."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), value


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, alternating calls so load changes hit all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: float(np.median(v)) for k, v in times.items()}


def random_matrix(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 8192):
        x[s : s + 8192] = rng.standard_normal((min(8192, n - s), d), dtype=np.float32)
    x += rng.standard_normal(d, dtype=np.float32)  # a shared direction: anisotropic, like LMs
    return x


def full_matrix_dispersion(x: np.ndarray) -> float:
    """The naive way: normalise, build the N×N cosine matrix, average its upper triangle."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = u @ u.T
    n = len(x)
    return 1.0 - (float(c.sum(dtype=np.float64)) - float(np.trace(c))) / (n * (n - 1))


def brute_float64(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.triu_indices(len(x), k=1)
    return float((1.0 - (u @ u.T)[i, j]).mean())


def bench_big(n_big: int, d: int, reps: int) -> None:
    x = random_matrix(n_big, d)
    t = interleaved({"sum": lambda: x.sum(0), "dispersion": lambda: dispersion(x)}, reps)
    print(
        f"[1] N={n_big} d={d} float32 ({x.nbytes / 2**20:.0f} MiB): X.sum(0) {t['sum'] * 1e3:.1f} ms, "
        f"dispersion {t['dispersion'] * 1e3:.1f} ms, ratio {t['dispersion'] / t['sum']:.2f}x "
        "(target <= 2.5x)"
    )

    tracemalloc.start()
    dispersion(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"[3] peak extra memory of dispersion at N={n_big}: {peak / 2**20:.1f} MiB "
        f"(input {x.nbytes / 2**20:.0f} MiB; an N×N float32 matrix would be "
        f"{n_big**2 * 4 / 2**30:.1f} GiB)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller N, fewer repeats")
    args = ap.parse_args()
    n_big, n_mat, d = (20_000, 2_000, 2048) if args.quick else (100_000, 8_000, 2048)
    reps = 3 if args.quick else 5
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cpus={os.cpu_count()}")

    bench_big(n_big, d, reps)  # [1] and [3]; frees its matrix before [2]

    y = random_matrix(n_mat, d, seed=1)
    t_ours, ours = median_time(lambda: dispersion(y), reps)
    t_full, full = median_time(lambda: full_matrix_dispersion(y), 2)
    rel = abs(full - ours) / ours
    print(
        f"[2] N={n_mat} d={d}: dispersion {t_ours * 1e3:.1f} ms, full N×N cosine matrix "
        f"{t_full * 1e3:.0f} ms, speed-up {t_full / t_ours:.0f}x (target >= 100x); "
        f"float32-matrix result differs by {rel:.1e} relative"
    )

    z = random_matrix(2000, 256, seed=2)
    cone = (z + 20 * z[0]).astype(np.float32)  # dispersion ~0.01: cancellation-prone
    for name, data in (("isotropic-ish", z), ("narrow cone", cone)):
        ref = brute_float64(data)
        print(
            f"[4] exactness, {name} (N=2000, d=256, D={ref:.5f}): relative error vs float64 brute "
            f"force {abs(dispersion(data) - ref) / ref:.1e} (target <= 1e-9)"
        )


if __name__ == "__main__":
    main()
