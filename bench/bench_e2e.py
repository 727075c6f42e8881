"""End to end: perplexity vs dispersion done three ways in one run, reported as ratios.

    python bench/bench_e2e.py                       # SmolLM2-135M fp32, 600 x 128, CPU
    python bench/bench_e2e.py --segments 96         # a quick run
    python bench/bench_e2e.py --compare-dtypes      # bfloat16, bf16-mixed vs float32
    python bench/bench_e2e.py --device cuda         # GPU: bf16, batch 64, pinned transfers
    python bench/bench_e2e.py --sides paper,mixed   # only the row a user would pick

The batched sides run 16 segments per forward on CPU (``--batch-size``; the CLI's default is 8):
on the 2-core CPU bf16-mixed took 41.0 s, 35.7 s and 37.8 s at batch 8, 16 and 32 for 200 x 128
segments (docs/benchmarks.md), so 16 is what a user who times it would pick.

The work: per segment its sequence perplexity, its last-token vector at ``final`` and the
dispersion among its own tokens (``within``); then Algorithm 1 bins by perplexity, and per bin
the across-segment dispersion of last-token vectors and the mean within-segment dispersion.
Data: WikiText-2 test from ``$REPDISP_SHARED_DATA/wikitext-2-raw/wiki.test.raw`` when present,
else the built-in ``python-docs``. Every side starts from the documents (tokenisation included,
cold: no token cache) and has the model already loaded.

    paper    the authors' released analysis code's method, re-created from its description,
             always in float32: batch 1 (one segment per forward, no padding, no batching);
             one forward with ``labels=`` for perplexity and a second with
             ``output_hidden_states=True`` (every layer's hidden states are materialised, the
             last one kept); the final hidden states of each segment saved as one .npy file;
             then each file read back, a T x T float32 cosine matrix per segment for the
             within-segment dispersion (O(T^2) pairwise), and a B x B matrix per bin for the
             across one (O(B^2) pairwise).
    floor    a plain batched forward ``model(ids, labels=ids)`` over the same segments: the
             cost of one pass, the floor for anything that needs perplexity.
    repdisp  ``ppl_vs_dispersion`` (what ``repdisp ppl-vs-dispersion --no-cache`` calls), plus
             its figure and JSON written to a temp folder, at ``--dtype`` (float32 on CPU).
    mixed    the same call with the model loaded at ``--dtype bf16-mixed`` (float32 weights,
             bfloat16 matrix products under autocast): what a user picks on a CPU or GPU.
             Compared with the float32 paper side: the speed ratio (target >= 4x); per
             segment the perplexity (relative) and within-segment dispersion differences; and
             the largest difference of every bin value (mean perplexity relative, across and
             within absolute; target <= 0.005) with the same segments in the same bins (the
             float32 side's Algorithm-1 bins), and also with each side binning by its own
             perplexities (then a bin may hold other segments: not a like-for-like number).

``--compare-dtypes`` runs the repdisp extraction in float32, bfloat16 and bf16-mixed (float32
weights, bfloat16 products under autocast) on the same segments and reports tokens/s and the
per-segment perplexity and dispersion differences from float32.
On CUDA the timings synchronise the device before reading the clock; nothing in the measured
loops waits for the device per batch. Nothing is asserted: times depend on the machine and on
how busy it is, so each line carries the load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch

from repdisp.analyses.binning import select_bins
from repdisp.analyses.ppl_dispersion import plot, ppl_vs_dispersion
from repdisp.core import tokcache
from repdisp.core.corpus import load_texts, make_segments
from repdisp.core.models import load_model
from repdisp.core.sampling import Sampling

SIDES = ("paper", "floor", "repdisp", "mixed")


def load_avg() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_data() -> str:
    root = os.environ.get("REPDISP_SHARED_DATA")
    wiki = Path(root or "", "wikitext-2-raw", "wiki.test.raw")
    return str(wiki) if root and wiki.is_file() else "python-docs"


def segments(lm, data: str, docs: list[str], args):
    """The same segments every side uses (seed 0), tokenised cold."""
    tokcache.clear_memory()
    max_len = lm.max_len
    return make_segments(
        lm.tokenizer, data, args.segments, args.seq_len, 0, docs, max_len, cache=False
    )


def pairwise_mean_cosine_distance(x: np.ndarray) -> float:
    """Mean over i<j of 1 - cos, from the full matrix (what the released scripts do)."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.triu_indices(len(u), k=1)
    return float(np.mean(1.0 - (u @ u.T)[i, j]))


def run_paper(lm, data: str, args, tmp: Path) -> dict:
    docs = load_texts(data)
    segs = segments(lm, data, docs, args)
    n, model = len(segs), lm.model
    ppl = np.empty(n)
    for i, row in enumerate(segs.ids):
        x = torch.from_numpy(row[None]).to(lm.device)
        with torch.no_grad():
            loss = model(x, labels=x).loss
            hidden = model(x, output_hidden_states=True).hidden_states[-1][0]
        ppl[i] = math.exp(loss.item())
        np.save(tmp / f"segment_{i:05d}.npy", hidden.float().cpu().numpy())
    last, within = [], np.empty(n)
    for i in range(n):
        h = np.load(tmp / f"segment_{i:05d}.npy")[args.skip_first :]
        within[i] = pairwise_mean_cosine_distance(h)
        last.append(h[-1])
    vectors = np.stack(last)
    sel = select_bins(ppl, args.bin_size, args.bins)
    bins = [
        (float(ppl[m].mean()), pairwise_mean_cosine_distance(vectors[m]), float(within[m].mean()))
        for m in sel.members
    ]
    written = sum(f.stat().st_size for f in tmp.glob("segment_*.npy"))
    return {
        "tokens": segs.ids.size,
        "bins": bins,
        "members": sel.members,
        "segment": (ppl, vectors, within),
        "bytes_written": written,
    }


def run_floor(lm, data: str, args) -> dict:
    docs = load_texts(data)
    segs = segments(lm, data, docs, args)
    ids = torch.from_numpy(segs.ids)
    if lm.device.type == "cuda":
        ids = ids.pin_memory()
    losses = []
    with torch.inference_mode():
        for b in range(0, len(ids), args.batch_size):
            x = ids[b : b + args.batch_size].to(lm.device, non_blocking=True)
            losses.append(lm.model(x, labels=x, use_cache=False).loss)
        mean_loss = float(torch.stack(losses).mean().cpu())  # the only host sync
    return {"tokens": segs.ids.size, "mean_loss": mean_loss}


def sampling(args) -> Sampling:
    return Sampling(
        segments=args.segments,
        seq_len=args.seq_len,
        seed=0,
        batch_size=args.batch_size,
        skip_first=args.skip_first,
        cache=False,
        progress=False,
    )


class Kept(Sampling):
    """``Sampling`` that keeps its last extraction, so the per-segment values can be compared
    afterwards (nothing else differs: the timed call is the same)."""

    def run(self, *a, **k):
        self.kept = super().run(*a, **k)
        return self.kept


def run_repdisp(lm, data: str, args, tmp: Path) -> dict:
    tokcache.clear_memory()
    s = Kept(**asdict(sampling(args)))
    result = ppl_vs_dispersion(
        models=[lm],
        datas=[data],
        sampling=s,
        bin_size=args.bin_size,
        n_bins=args.bins,
        pooling="last",
        site="final",
    )
    fig = plot(result)
    fig.savefig(tmp / "ppl_vs_dispersion.png", dpi=120)
    (tmp / "ppl_vs_dispersion.json").write_text(json.dumps(asdict(result), default=float))
    bins = [(p.mean_ppl, p.across, p.within) for p in result.series[0].bins]
    ex = s.kept[1]
    one = (ex.seq_ppl, ex.get("final", "last"), ex.get("final", "within"))
    n_tokens = args.segments * (args.seq_len + int(result.series[0].bos))
    members = select_bins(ex.seq_ppl, args.bin_size, args.bins).members
    return {"tokens": n_tokens, "bins": bins, "segment": one, "members": members}


def timed(device: torch.device, fn):
    before = load_avg()
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    out["seconds"] = time.perf_counter() - t0
    out["load"] = f"{before} -> {load_avg()}"
    return out


def warm_up(lm, args) -> None:
    x = torch.randint(0, 1000, (min(args.batch_size, 4), args.seq_len), device=lm.device)
    with torch.inference_mode():
        lm.model(x, labels=x, use_cache=False)
        lm.model(x[:1], labels=x[:1])
    sync(lm.device)


def bin_differences(paper: list, other: list) -> tuple[float, float, float] | None:
    """Largest |difference| per bin value: mean perplexity (relative), across, within."""
    a, b = np.array(paper), np.array(other)
    if a.shape != b.shape:
        return None
    return (
        float(np.max(np.abs(a[:, 0] - b[:, 0]) / a[:, 0])),
        float(np.max(np.abs(a[:, 1] - b[:, 1]))),
        float(np.max(np.abs(a[:, 2] - b[:, 2]))),
    )


def same_bins(paper: dict, other: dict) -> tuple[float, float, float]:
    """``bin_differences`` with ``other``'s bin values recomputed from its own per-segment
    values on the paper side's bin members: the same segments in the same bins."""
    ppl, vec, within = other["segment"]
    vec = vec.astype(np.float64)
    bins = [
        (float(ppl[m].mean()), pairwise_mean_cosine_distance(vec[m]), float(within[m].mean()))
        for m in paper["members"]
    ]
    return bin_differences(paper["bins"], bins)


def compare_values(paper: dict, other: dict, name: str) -> None:
    """Per-segment and per-bin differences of ``other`` from the float32 paper side."""
    (pp, _, pw), (op, _, ow) = paper["segment"], other["segment"]
    rel = np.abs(op - pp) / pp
    dw = np.abs(ow - pw)
    print(
        f"  per segment: perplexity relative difference max {rel.max():.5f} (median "
        f"{np.median(rel):.5f}, mean signed {np.mean((op - pp) / pp):+.5f}); within-segment "
        f"dispersion max {dw.max():.5f} (median {np.median(dw):.5f})"
    )
    d = same_bins(paper, other)
    ok = "met" if max(d) <= 0.005 else "NOT met"
    print(
        f"  same segments in the same bins (the float32 side's Algorithm-1 bins): max bin-value "
        f"difference {max(d):.5f} (target <= 0.005, {ok}): mean perplexity {d[0]:.5f} relative, "
        f"across {d[1]:.5f}, within {d[2]:.5f}"
    )
    if o := bin_differences(paper["bins"], other["bins"]):
        same = sum(
            set(map(int, a)) == set(map(int, b))
            for a, b in zip(paper["members"], other["members"], strict=True)
        )
        print(
            f"  each side's own bins ({name} binning by its own perplexities; {same} of "
            f"{len(paper['members'])} bins hold the same segments): max {max(o):.5f}: "
            f"mean perplexity {o[0]:.5f} relative, across {o[1]:.5f}, within {o[2]:.5f}"
        )


def e2e(args) -> None:
    data = args.data or default_data()
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    models = {"repdisp": lm, "floor": lm}
    if "paper" in args.sides:  # the paper's method runs in float32 whatever --dtype is
        fp32 = args.dtype == "float32"
        models["paper"] = (
            lm if fp32 else load_model(args.model, device=args.device, dtype="float32")
        )
    if "mixed" in args.sides:
        models["mixed"] = load_model(args.model, device=args.device, dtype="bf16-mixed")
    print(
        f"# {args.model} {args.dtype} on {args.device} (torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs); data {Path(data).name}; "
        f"{args.segments} segments x {args.seq_len} tokens; batch {args.batch_size}; "
        f"{args.bins} bins of {args.bin_size}"
    )
    for m in {id(models[s]): models[s] for s in args.sides}.values():
        warm_up(m, args)
    res = {}
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
        for side in args.sides:
            folder = Path(tmp, side)
            folder.mkdir()
            m = models[side]
            if side == "floor":
                res[side] = timed(m.device, partial(run_floor, m, data, args))
            else:
                fn = run_paper if side == "paper" else run_repdisp
                res[side] = timed(m.device, partial(fn, m, data, args, folder))
            r = res[side]
            extra = (
                f", {r['bytes_written'] / 2**20:.0f} MiB of .npy written"
                if "bytes_written" in r
                else ""
            )
            print(
                f"{side:<8} {r['seconds']:8.1f} s  {r['tokens'] / r['seconds']:8.1f} tokens/s"
                f"{extra}  ({r['load']})",
                flush=True,
            )
    if "repdisp" in res and "paper" in res:
        ratio = res["paper"]["seconds"] / res["repdisp"]["seconds"]
        print(f"repdisp vs paper: {ratio:.2f}x faster (target >= 4x)")
        if d := bin_differences(res["paper"]["bins"], res["repdisp"]["bins"]):
            print(
                f"  same bins, largest differences: mean perplexity {d[0]:.2e} relative, "
                f"across {d[1]:.2e}, within {d[2]:.2e}"
            )
    if "mixed" in res and "paper" in res:
        ratio = res["paper"]["seconds"] / res["mixed"]["seconds"]
        print(
            f"repdisp bf16-mixed vs paper (float32): {ratio:.2f}x faster (target >= 4x"
            + (")" if ratio >= 4 else f"; {4 / ratio:.2f}x short)")
        )
        compare_values(res["paper"], res["mixed"], "bf16-mixed")
    if "repdisp" in res and "floor" in res:
        rate = lambda s: res[s]["tokens"] / res[s]["seconds"]  # noqa: E731
        print(
            f"repdisp vs floor: {rate('repdisp') / rate('floor'):.2f}x the tokens/s of the plain "
            "batched forward (target >= 0.9x)"
        )
    if "floor" in res and "paper" in res:
        print(f"floor vs paper: {res['paper']['seconds'] / res['floor']['seconds']:.2f}x faster")


def extract_once(lm, data: str, docs: list[str], args) -> dict:
    tokcache.clear_memory()
    segs, ex = sampling(args).run(lm, data, "final", ["last", "within"], docs)
    return {"segs": segs, "ex": ex}


def compare_dtypes(args) -> None:
    """repdisp extraction in float32, bfloat16 and bf16-mixed on the same segments."""
    data = args.data or default_data()
    docs = load_texts(data)
    out = {}
    for dtype in ("float32", "bfloat16", "bf16-mixed"):
        lm = load_model(args.model, device=args.device, dtype=dtype)
        warm_up(lm, args)
        r = timed(lm.device, partial(extract_once, lm, data, docs, args))
        r["tokens"] = r["segs"].ids.size
        out[dtype] = r
        print(
            f"{dtype:<10} {r['seconds']:8.1f} s  {r['tokens'] / r['seconds']:8.1f} tokens/s  "
            f"({r['load']})",
            flush=True,
        )
        del lm
    f = out["float32"]
    pf = f["ex"].seq_ppl
    sel = select_bins(pf, args.bin_size, args.bins)
    for dtype in ("bfloat16", "bf16-mixed"):
        b = out[dtype]
        assert np.array_equal(f["segs"].ids, b["segs"].ids)
        speed = (b["tokens"] / b["seconds"]) / (f["tokens"] / f["seconds"])
        rel = np.abs(b["ex"].seq_ppl - pf) / pf
        last_rel = np.abs(b["ex"].last_ppl - f["ex"].last_ppl) / f["ex"].last_ppl
        wf, wb = f["ex"].get("final", "within"), b["ex"].get("final", "within")
        across = [
            abs(
                pairwise_mean_cosine_distance(b["ex"].get("final", "last")[m].astype(np.float64))
                - pairwise_mean_cosine_distance(f["ex"].get("final", "last")[m].astype(np.float64))
            )
            for m in sel.members
        ]
        print(f"{dtype} vs float32: {speed:.2f}x tokens/s (target >= 1.6x)")
        print(
            f"  per-segment perplexity: max relative difference {rel.max():.4f} "
            f"(median {np.median(rel):.4f}, 99th percentile {np.quantile(rel, 0.99):.4f}; "
            f"target <= 0.005); last-token perplexity median {np.median(last_rel):.4f}"
        )
        print(
            f"  within-segment dispersion: max |difference| {np.abs(wb - wf).max():.5f}; across "
            f"(Algorithm 1 bins of the float32 run): max |difference| {max(across):.5f} "
            "(target <= 0.005)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", help="text source (default: WikiText-2 test, else python-docs)")
    p.add_argument("--segments", type=int, default=600)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        help="the repdisp and floor sides (default: fp32 CPU, bf16 CUDA); paper is always fp32",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-size", type=int, help="default 16 on CPU, 64 on CUDA")
    p.add_argument(
        "--sides", default=",".join(SIDES), help="comma-separated subset of " + ",".join(SIDES)
    )
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--bin-size", type=int, help="default: segments // 12, at most 50")
    p.add_argument("--skip-first", type=int, default=1)
    p.add_argument(
        "--compare-dtypes", action="store_true", help="bfloat16 and bf16-mixed vs float32 instead"
    )
    args = p.parse_args()
    cuda = args.device == "cuda"
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.batch_size = args.batch_size or (64 if cuda else 16)
    args.bin_size = args.bin_size or max(2, min(50, args.segments // (args.bins + 2)))
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if unknown := set(args.sides) - set(SIDES):
        p.error(f"unknown sides {sorted(unknown)}; choose from {', '.join(SIDES)}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {load_avg()}")
    if args.compare_dtypes:
        compare_dtypes(args)
    else:
        e2e(args)
    print(f"# done; {load_avg()}")


if __name__ == "__main__":
    main()
