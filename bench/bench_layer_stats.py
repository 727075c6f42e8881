"""Layer-wise statistics of one reproduce cell, before and after, against the forward it follows.

    python bench/bench_layer_stats.py [--segments 2000] [--sites 32] [--d 576] [--reps 200]
                                      [--forward-segments 64] [--no-forward]

A synthetic cell of the CPU config's sizes (N segments, 32 sites of d=576 random vectors, random
perplexities; Algorithm 1 with bins of 50, 10 bins, a 50-bin curve, ``layer_stats_reps``
replicates and as many permutations) goes through ``analyses.binning.segment_stats`` (the
function the ``layers`` step calls) twice in one run: with ``core.stats.PER_DRAW`` (the old
path: one sparse product and one statistics call per draw and site) and with the stacked path
(``core.across``: one product per site over every draw). Both results are compared (max abs
difference). The forward: SmolLM2-135M in float32 on ``--forward-segments`` random segments of
128 tokens, batch 8, scaled linearly to N (the extraction's forward cost), so the last line is
the statistics' share of the cell's forward. Absolute times depend on the load (printed).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import repdisp.core.stats as cs
from repdisp.analyses.binning import segment_stats
from repdisp.core.settings import Statistics


def flat(o, out):
    if isinstance(o, dict):
        for k in sorted(o):
            flat(o[k], out)
    elif isinstance(o, list | tuple):
        for v in o:
            flat(v, out)
    elif isinstance(o, int | float) and not isinstance(o, bool):
        out.append(float(o))
    return out


def forward_seconds(n_segments: int, n_measured: int) -> float:
    """Seconds of SmolLM2-135M float32 forwards over ``n_measured`` segments x 128, batch 8,
    scaled to ``n_segments``."""
    import torch

    from repdisp.core.loading import load_model

    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    ids = torch.randint(0, 1000, (n_measured, 128))
    with torch.inference_mode():
        lm.model(ids[:8])  # warm-up
        t = time.perf_counter()
        for i in range(0, n_measured, 8):
            lm.model(ids[i : i + 8], output_hidden_states=True)
        return (time.perf_counter() - t) * n_segments / n_measured


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=2000)
    ap.add_argument("--sites", type=int, default=32)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--forward-segments", type=int, default=64)
    ap.add_argument("--no-forward", action="store_true")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    ppl = np.exp(rng.normal(3, 0.5, a.segments))
    vecs = [rng.normal(size=(a.segments, a.d)).astype(np.float32) + 0.3 for _ in range(a.sites)]
    within = np.stack([rng.random(a.segments) for _ in range(a.sites)])
    st = Statistics(bin_size=50, n_bins=10, bootstrap=2000, seed=0, curve_bins=50,
                    stats_reps=a.reps, permutations=a.reps)  # fmt: skip
    print(f"cell: N={a.segments}, {a.sites} sites x d={a.d}, {a.reps} replicates + {a.reps} "
          f"permutations; load {os.getloadavg()[0]:.2f}")  # fmt: skip
    secs, vals = {}, {}
    for name, flag in (("before (per draw)", True), ("after (stacked)", False)):
        cs.PER_DRAW = flag
        t = time.perf_counter()
        vals[name] = np.array(flat(segment_stats(ppl, within, vecs, st), []))
        secs[name] = time.perf_counter() - t
        print(f"  {name:<20}{secs[name]:8.1f} s")
    cs.PER_DRAW = False
    b, n = vals.values()
    ok = ~np.isnan(b)
    print(f"  speed-up {secs['before (per draw)'] / secs['after (stacked)']:.1f}x; max |diff| "
          f"{np.abs(b[ok] - n[ok]).max():.1e} over {ok.sum()} numbers")  # fmt: skip
    if not a.no_forward:
        fwd = forward_seconds(a.segments, a.forward_segments)
        print(f"  forward (SmolLM2-135M fp32, {a.forward_segments} segments x 128 scaled to "
              f"{a.segments}): {fwd:.1f} s; load {os.getloadavg()[0]:.2f}")  # fmt: skip
        for name, s in secs.items():
            print(f"  statistics / forward, {name}: {s / fwd:.1%}")


if __name__ == "__main__":
    main()
