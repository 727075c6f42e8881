"""Peak host memory (RSS) of the §2 commands at two numbers of segments, side by side.

    python bench/bench_memory.py                                   # 100 and 400 segments x 32
    python bench/bench_memory.py --sizes 400,1600 --commands layers
    python bench/bench_memory.py --model tiny                      # a random 2-block Llama

Each (command, N) runs the real CLI in a fresh process (``--no-cache``, python-docs, batch 16)
and reads that process's own peak RSS from ``os.wait4``. Defaults: SmolLM2-135M (30 blocks,
d=576, float32), ``measure`` at ``final``, ``layers`` at every block output, and
``ppl-vs-dispersion`` at ``final``; 100 and 400 segments of 32 tokens (the same 4x step as the
400 -> 1,600 target); 100 bootstrap/permutation replicates (the replicate plans are the one
statistics term that grows with N x replicates, see docs/scale.md). On the shared 2-core machine
at load 6-7, ``measure`` and ``ppl-vs-dispersion`` took 5.3 minutes together and ``layers`` adds
about 3-4, so the default run takes about 9 minutes (each process pays ~35 s of imports,
loading and tokenising before its first segment). ``reproduce`` is not run (its grid needs a config; one
cell holds ``layers``' extraction and then runs ``ppl-vs-dispersion``'s and ``layers``'
statistics on it, one after the other).

What should grow with N is only the pooled vectors and per-segment numbers: N x sites x (d x 4
bytes of float32 + 8 bytes of within dispersion) + N x (seq_len + 1) x 8 bytes of token ids, plus
for the statistics one site's float64 unit vectors and a transient copy (2 x N x d x 8) and the
replicate plans (about (1 + 2 reps) x 2N x 16 bytes). The script prints each peak, the growth
ratio peak(N1)/peak(N0) and the measured growth next to that estimate.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ("measure", "layers", "ppl-vs-dispersion")
N_SITES = {"measure": 1, "layers": None, "ppl-vs-dispersion": 1}  # None: every block


def tiny_model(folder: Path) -> tuple[str, int, int]:
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
    return str(folder), 576, 2


def peak_rss_mib(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; its own peak RSS in MiB and its wall time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def command(name: str, model: str, n: int, args: argparse.Namespace, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "repdisp", name, "--model", model, "--data", args.data]
    cmd += ["--segments", str(n), "--seq-len", str(args.seq_len)]
    cmd += ["--batch-size", str(args.batch_size), "--bootstrap", str(args.reps)]
    cmd += ["--no-cache", "--quiet", "--out", str(out), "--overwrite"]
    if name == "measure":
        return cmd + ["--site", "final"]
    cmd += ["--bin-size", str(n // 20), "--bins", "10"]
    cmd += ["--stats-reps", str(args.reps), "--permutations", str(args.reps)]
    return cmd + (["--site", "all"] if name == "layers" else [])


def estimate(n: int, d: int, sites: int, args: argparse.Namespace, stats: bool) -> float:
    """Bytes that should scale with N (module docstring)."""
    b = n * sites * (4 * d + 8) + n * (args.seq_len + 1) * 8
    if stats:
        b += 2 * n * d * 8 + (1 + 2 * args.reps) * 2 * n * 16  # float64 units + copy, plans
    return b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="a model spec, or 'tiny'")
    p.add_argument("--data", default="python-docs")
    p.add_argument("--sizes", default="100,400", help="two numbers of segments, N0,N1")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--reps", type=int, default=100, help="bootstrap and permutation replicates")
    p.add_argument("--commands", default=",".join(COMMANDS))
    args = p.parse_args()
    n0, n1 = (int(s) for s in args.sizes.split(","))
    names = [c.strip() for c in args.commands.split(",") if c.strip()]
    if unknown := set(names) - set(COMMANDS):
        p.error(f"unknown commands {sorted(unknown)}; choose from {', '.join(COMMANDS)}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        if args.model == "tiny":
            model, d, blocks = tiny_model(Path(tmp, "tiny"))
        else:
            from repdisp.core.models import load_model

            lm = load_model(args.model, device="cpu", dtype="float32")
            model, d, blocks = args.model, lm.d_model, lm.n_blocks
            weights = sum(t.numel() * t.element_size() for t in lm.model.state_dict().values())
            print(f"# {model}: {blocks} blocks, d={d}, float32 weights {weights / 2**20:.0f} MiB")
            del lm
        print(
            f"# N = {n0:,} and {n1:,} segments x {args.seq_len} tokens, batch {args.batch_size}, "
            f"{args.reps} replicates, data {args.data}",
            flush=True,
        )
        rows = []
        for name in names:
            peaks = []
            for n in (n0, n1):
                load = f"{os.getloadavg()[0]:.1f}"
                rss, wall = peak_rss_mib(command(name, model, n, args, Path(tmp, f"{name}{n}")))
                peaks.append(rss)
                print(f"{name:<18} N={n:>6,}  peak RSS {rss:7.0f} MiB  ({wall:.0f} s, load {load})",
                      flush=True)  # fmt: skip
            sites = N_SITES[name] or blocks
            stats = name != "measure"
            est = (estimate(n1, d, sites, args, stats) - estimate(n0, d, sites, args, stats)) / 2**20
            rows.append((name, peaks, est))
    print(f"\n{'command':<18}{'peak N0':>9}{'peak N1':>9}{'ratio':>8}{'growth':>9}{'estimate':>10}")
    for name, (a, b), est in rows:
        print(f"{name:<18}{a:>8.0f}M{b:>8.0f}M{b / a:>8.3f}{b - a:>8.0f}M{est:>9.1f}M")


if __name__ == "__main__":
    main()
