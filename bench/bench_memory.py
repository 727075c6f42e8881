"""Peak memory of ``repdisp ppl-vs-dispersion`` against the number of segments.

    python bench/bench_memory.py                          # SmolLM2-135M, N = 2,000 and 20,000
    python bench/bench_memory.py --model tiny             # a random 2-block Llama, d=576
    python bench/bench_memory.py --sizes 2000,20000,100000 --seq-len 16

Each size runs the real command in a fresh process (``--no-cache``, python-code, short segments)
and reads that process's peak RSS from ``os.wait4``. What should grow with N is only the chosen
site's pooled vectors and per-segment numbers: N x (d float32 last-token vector + float64 within
dispersion + two float64 NLLs) bytes, plus the token ids (N x seq_len int64). The script prints
the measured growth next to that estimate. ``--model tiny`` builds a random 2-block Llama with
SmolLM2's width (d=576) and a 512-token BPE vocabulary in a temp folder: the same O(N·d) term
at a fraction of the compute, for a busy machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tiny_model(folder: Path) -> tuple[str, int]:
    from pydoc_data.topics import topics

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([topics[k] for k in sorted(topics)][:50], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=2,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return str(folder), 576


def peak_rss_mib(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; its own peak RSS in MiB and its wall time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="a model spec, or 'tiny'")
    p.add_argument("--data", default="python-code")
    p.add_argument("--sizes", default="2000,20000")
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        if args.model == "tiny":
            model, d = tiny_model(Path(tmp, "tiny"))
        else:
            from repdisp.core.models import load_model

            lm = load_model(args.model, device="cpu", dtype="float32")
            model, d = args.model, lm.model.get_input_embeddings().embedding_dim
            del lm
        rows = []
        for n in sizes:
            cmd = [sys.executable, "-m", "repdisp", "ppl-vs-dispersion", "--model", model]
            cmd += ["--data", args.data, "--segments", str(n), "--seq-len", str(args.seq_len)]
            cmd += ["--batch-size", str(args.batch_size), "--bin-size", str(n // 20)]
            cmd += ["--bins", "10", "--no-cache", "--quiet", "--out", str(Path(tmp, f"out{n}"))]
            load = f"{os.getloadavg()[0]:.2f}"
            rss, wall = peak_rss_mib(cmd)
            rows.append((n, rss))
            print(f"N={n:>7,}  peak RSS {rss:8.1f} MiB  ({wall:.0f} s, load {load})", flush=True)
    per_segment = 4 * d + 8 * 3 + 8 * (args.seq_len + 1)
    (n0, r0), (n1, r1) = rows[0], rows[-1]
    print(
        f"growth N={n0:,} -> {n1:,}: {r1 - r0:.1f} MiB measured; O(N·d) estimate "
        f"{(n1 - n0) * per_segment / 2**20:.1f} MiB (d={d}: {per_segment} bytes per segment); "
        f"per segment {(r1 - r0) * 2**20 / (n1 - n0):.0f} bytes measured"
    )


if __name__ == "__main__":
    main()
