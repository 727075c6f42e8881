"""Cost of the push-away loss: a CE-only training step vs. CE + λ·L_aux, side by side.

Both variants run in one process on the same model and batch, interleaved (alternating order per
repetition), and the median step time is compared. The loss alone (forward + backward on the
final-layer states) is timed too, and so is the naive N×N version at the same size, with its
peak memory, for contrast.

    python bench/bench_pushaway.py                       # CPU, tiny GPT-2, 64 x 128 tokens
    python bench/bench_pushaway.py --device cuda --n-layer 12 --n-embd 768 --n-head 12
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from repdisp.io.results import write_json
from repdisp.training import PushAwayLoss, naive_dispersion


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def _peak_bytes(fn, device: str) -> float:
    """Peak extra memory of ``fn``: CUDA allocator peak, or the rise of the process's max RSS."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (CUDA)")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--out", default="bench-out/bench_pushaway.json")
    a = p.parse_args()

    torch.manual_seed(0)
    conf = GPT2Config(
        n_layer=a.n_layer,
        n_embd=a.n_embd,
        n_head=a.n_head,
        vocab_size=a.vocab,
        n_positions=a.seq,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(conf).to(a.device).train()
    model.loss_type = "ForCausalLM"  # GPT-2 leaves it None (silences a warning)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), device=a.device)
    push = PushAwayLoss("single")
    amp = torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16, enabled=a.bf16)

    def step(aux: bool) -> None:
        with amp:
            out = model(input_ids=ids, labels=ids, output_hidden_states=aux)
            loss = out.loss + 0.1 * push(out.hidden_states[-1]).loss if aux else out.loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    # The loss alone and the naive version first, so the RSS peak rise on CPU is theirs alone.
    with torch.no_grad(), amp:
        hidden = model.transformer(input_ids=ids).last_hidden_state.float()
    h = hidden.clone().requires_grad_(True)

    def loss_alone() -> None:
        push(h).loss.backward()

    def naive_alone() -> None:
        (-naive_dispersion(h)).backward()

    loss_alone()
    loss_s = [_timed(loss_alone, a.device) for _ in range(a.reps)]
    loss_mem = _peak_bytes(loss_alone, a.device)
    naive = {}
    if not a.skip_naive:
        naive["naive_peak_bytes"] = _peak_bytes(naive_alone, a.device)
        naive["naive_s"] = statistics.median(_timed(naive_alone, a.device) for _ in range(3))
        naive["naive_matrix_bytes"] = (a.batch * a.seq) ** 2 * 4

    step(False), step(True)  # warm-up
    times: dict[str, list[float]] = {"ce": [], "ce+aux": []}
    for r in range(a.reps):
        order = (False, True) if r % 2 == 0 else (True, False)
        for aux in order:
            times["ce+aux" if aux else "ce"].append(_timed(lambda aux=aux: step(aux), a.device))

    result = {
        "device": a.device,
        "model": {"n_layer": a.n_layer, "n_embd": a.n_embd, "n_head": a.n_head, "vocab": a.vocab},
        "n_params": sum(q.numel() for q in model.parameters()),
        "tokens": [a.batch, a.seq],
        "bf16": a.bf16,
        "reps": a.reps,
        "threads": torch.get_num_threads(),
        "step_s": {k: statistics.median(v) for k, v in times.items()},
        "step_s_all": times,
        "loss_alone_s": statistics.median(loss_s),
        "loss_alone_peak_bytes": loss_mem,
    }
    ce, both = result["step_s"]["ce"], result["step_s"]["ce+aux"]
    result["overhead_pct_side_by_side"] = 100 * (both - ce) / ce
    pairs = zip(times["ce"], times["ce+aux"], strict=True)
    result["overhead_pct_paired"] = statistics.median(100 * (y - x) / x for x, y in pairs)
    result["overhead_pct_loss_alone"] = 100 * result["loss_alone_s"] / ce
    result.update(naive)
    write_json(Path(a.out), result)
    print(f"{result['n_params'] / 1e6:.2f}M-param GPT-2, {a.batch}x{a.seq} tokens on {a.device}")
    print(f"CE-only step {ce * 1e3:.1f} ms, CE+aux step {both * 1e3:.1f} ms (medians of {a.reps})")
    print(f"overhead side by side {result['overhead_pct_side_by_side']:+.2f}% (median of paired "
          f"differences {result['overhead_pct_paired']:+.2f}%); loss alone "
          f"{result['loss_alone_s'] * 1e3:.2f} ms = {result['overhead_pct_loss_alone']:.2f}% of a step")  # fmt: skip
    if "naive_s" in result:
        print(f"naive N x N: {result['naive_s'] * 1e3:.1f} ms, peak +{result['naive_peak_bytes'] / 2**20:.0f} MiB "
              f"(matrix alone {result['naive_matrix_bytes'] / 2**20:.0f} MiB)")  # fmt: skip
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
