"""Throughput and memory of repdisp extraction against the plain Hugging Face forward.

    python bench/bench_extract.py [--quick]

1. tokens/s of ``extract(perplexity=False)`` vs ``model(input_ids, output_hidden_states=True)``
   on the same batches: Gemma-3-270M at site ``final`` (we skip the 262k-vocabulary LM head) and
   SmolLM2-135M at block 15 (we also stop after block 15 of 30).
2. Our per-token NLL vs HF's ``labels=`` loss on the same batch (relative difference).
3. Peak extra memory of the logits part at batch 8 x 512 on Gemma (Linux peak RSS, reset through
   /proc/self/clear_refs before each): our chunked ``token_nll`` vs HF's full-logits
   ``lm_head`` + ``loss_function``, both from the same final hidden states.
Ratios come from one run, calls interleaved; nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import time

import numpy as np
import torch

from repdisp.core.corpus import make_segments
from repdisp.core.extract import extract, token_nll
from repdisp.core.models import load_model


def _status_kib(field: str) -> int:
    text = open("/proc/self/status").read()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def peak_extra_mib(fn) -> float:
    """Peak RSS above the current RSS while ``fn()`` runs, in MiB."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) / 1024


def hf_pass(lm, ids: np.ndarray, batch: int) -> None:
    """What one would write without repdisp: the full forward with every hidden state."""
    with torch.inference_mode():
        for b in range(0, len(ids), batch):
            x = torch.from_numpy(ids[b : b + batch])
            lm.model(input_ids=x, output_hidden_states=True, use_cache=False)


def throughput(lm, name: str, site: str, n: int, seq_len: int, batch: int, reps: int) -> None:
    segs = make_segments(lm.tokenizer, "python-docs", n, seq_len, seed=0)
    tokens = segs.ids.size
    fns = {
        "hf": lambda: hf_pass(lm, segs.ids, batch),
        "ours": lambda: extract(
            lm, segs, site, "last", perplexity=False, batch_size=batch, cache=False, progress=False
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    fns["ours"]()  # warm-up (first-call allocations)
    for _ in range(reps):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    tps = {k: tokens / float(np.median(v)) for k, v in times.items()}
    print(
        f"[1] {name}, site {site}, {n} x {segs.ids.shape[1]} tokens, batch {batch}: "
        f"HF {tps['hf']:.0f} tok/s, repdisp {tps['ours']:.0f} tok/s, "
        f"speed-up {tps['ours'] / tps['hf']:.2f}x"
    )


def nll_agreement(lm, n: int, seq_len: int) -> None:
    segs = make_segments(lm.tokenizer, "python-docs", n, seq_len, seed=1)
    ex = extract(lm, segs, "final", "last", batch_size=n, cache=False, progress=False)
    x = torch.from_numpy(segs.ids)
    with torch.inference_mode():
        loss = lm.model(x, labels=x, use_cache=False).loss.item()
    ours = float(ex.mean_nll.mean())  # equal lengths: mean of per-segment means = token mean
    print(
        f"[2] NLL, {n} x {segs.ids.shape[1]} tokens: repdisp {ours:.6f}, HF labels= {loss:.6f}, "
        f"relative difference {abs(ours - loss) / loss:.1e}"
    )


def logits_memory(lm, batch: int, seq_len: int) -> None:
    segs = make_segments(lm.tokenizer, "python-docs", batch, seq_len, seed=2)
    x = torch.from_numpy(segs.ids)
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    with torch.inference_mode():
        hidden = lm.model.base_model(input_ids=x, use_cache=False)[0]
        out = {}
        ours = peak_extra_mib(lambda: out.update(ours=token_nll(lm.model, hidden, x).mean()))

        def hf_logits_loss() -> None:
            logits = lm.model.lm_head(hidden)
            out["hf"] = lm.model.loss_function(logits, labels=x, vocab_size=vocab)

        full = x.numel() * vocab * 4 / 2**20
        avail = _status_meminfo_mib("MemAvailable")
        if avail < 2.5 * full:
            print(f"[3] skipped HF side: needs ~{2 * full:.0f} MiB, {avail:.0f} MiB available")
            return
        hf = peak_extra_mib(hf_logits_loss)
    print(
        f"[3] logits part, Gemma batch {batch} x {x.shape[1]} tokens (vocab {vocab}): peak extra "
        f"RSS repdisp {ours:.0f} MiB, HF {hf:.0f} MiB (one fp32 logits tensor = {full:.0f} MiB), "
        f"ratio {ours / hf:.3f} (target <= 0.25); losses {out['ours'].item():.6f} vs "
        f"{out['hf'].item():.6f}"
    )


def _status_meminfo_mib(field: str) -> float:
    text = open("/proc/meminfo").read()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens; memory at batch 2")
    args = ap.parse_args()
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"OMP_NUM_THREADS={threads}, torch threads={torch.get_num_threads()}, cpu, float32")
    reps = 1 if args.quick else 2

    gemma = load_model("gemma3-270m", device="cpu", dtype="float32")
    throughput(gemma, "gemma3-270m", "final", 4 if args.quick else 8, 128, 4, reps)
    nll_agreement(gemma, 2, 128)
    logits_memory(gemma, 2 if args.quick else 8, 512)
    del gemma
    gc.collect()

    smol = load_model("smollm2-135m", device="cpu", dtype="float32")
    throughput(smol, "smollm2-135m", "15", 8 if args.quick else 16, 128, 8, reps)
    nll_agreement(smol, 4, 128)


if __name__ == "__main__":
    main()
