"""Extraction throughput (segments/s) for the "Running at scale" table, 1 or several processes.

    python bench/bench_scale.py --model smollm2-135m --seq-len 128 --dtype float32
    torchrun --nproc_per_node 2 bench/bench_scale.py --model smollm2-135m --seq-len 128 ...

What is timed is what ``repdisp measure`` spends per segment: one forward with perplexity and
the last-token vector at ``final`` (batch 8, no shard cache), after a one-segment warm-up. Under a
launcher every process takes its shards (``rank::world_size``) and the time is the slowest
process's, between two barriers. Rank 0 appends one JSON line to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import torch

from repdisp.core import distributed
from repdisp.core.corpus import make_segments
from repdisp.core.extract import extract
from repdisp.core.models import load_model, resolve_device


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--segments", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="bench-out/scale_throughput.jsonl")
    args = ap.parse_args()

    dist, created = distributed.setup(resolve_device("auto"))
    lm = load_model(args.model, "auto", args.dtype)
    segs = make_segments(lm.tokenizer, "python-docs", args.segments, args.seq_len, seed=0)
    kw = dict(sites="final", batch_size=args.batch_size, cache=False, progress=False)
    extract(lm, replace(segs, ids=segs.ids[:1]), **kw)  # warm-up: one segment
    dist.barrier()
    start = time.perf_counter()
    extract(
        lm, segs, shard_segments=args.batch_size, rank=dist.rank, world_size=dist.world_size, **kw
    )
    dist.barrier()
    seconds = time.perf_counter() - start
    if dist.is_main:
        row = {
            "model": args.model,
            "dtype": args.dtype,
            "seq_len": args.seq_len,
            "segments": args.segments,
            "batch_size": args.batch_size,
            "processes": dist.world_size,
            "threads_per_process": torch.get_num_threads(),
            "seconds": round(seconds, 2),
            "segments_per_s": round(args.segments / seconds, 3),
            "load_avg_1min": os.getloadavg()[0],
        }
        print(json.dumps(row))
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    if created:
        distributed.teardown()


if __name__ == "__main__":
    main()
