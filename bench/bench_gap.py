"""Benchmark: scoring a checkpoint's dispersion gap vs loading it with ``from_pretrained``.

Targets (issue 4): scoring takes at most 10% of the ``from_pretrained`` time, and its peak memory
is at most 1.5x the size of the one tensor it reads, plus the interpreter. Every measurement runs
in a fresh subprocess; end to end is measured without and with the cached token sets; memory is ``ru_maxrss`` minus that of a baseline subprocess with the same
imports. Times exclude imports (both sides import torch/transformers first).

    python bench/bench_gap.py [--model smollm2-135m --model gemma3-270m --model FILE.gguf ...]
                              [--out bench-out/bench_gap.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from repdisp.core.models import BUNDLED, converted_dir

IMPORTS = """
import json, resource, time
import numpy as np, torch, transformers, safetensors, gguf
from repdisp.applications.gap import DOMAINS, REFERENCES, EmbeddingRows, _matrix_shape, checkpoint_gap
from repdisp.applications.gap import gap_components, token_set
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
"""

BASELINE = IMPORTS + "print(json.dumps({'rss': rss()}))"

# Scoring given the token ids (tokenizer already loaded): open, read the rows, compute.
SCORE = (
    IMPORTS
    + """
spec = {spec!r}
src0 = EmbeddingRows(spec); tok = src0.tokenizer()
dom, ref = token_set(tok, 'python', DOMAINS['python']), token_set(tok, 'everyday', REFERENCES['everyday'])
r0 = rss(); t = time.perf_counter()
src = EmbeddingRows(spec)
rows = src.rows(np.concatenate([dom.ids, ref.ids]))
g = gap_components(rows[: len(dom.ids)], rows[len(dom.ids):], 'cosine')
e = gap_components(rows[: len(dom.ids)], rows[len(dom.ids):], 'euclidean')
score_s = time.perf_counter() - t
shape = _matrix_shape(src)
print(json.dumps({{'score_s': score_s, 'rss_before': r0, 'rss': rss(), 'shape': shape,
                  'gap': g.gap, 'kind': src.kind, 'tensor': src.tensor}}))
"""
)

# End to end: tokenizer load + mapping + rows + both metrics.
E2E = (
    IMPORTS
    + """
t = time.perf_counter()
c = checkpoint_gap({spec!r}, ('python', DOMAINS['python']), ('everyday', REFERENCES['everyday']))
print(json.dumps({{'e2e_s': time.perf_counter() - t, 'rss': rss()}}))
"""
)

LOAD = (
    IMPORTS
    + """
from transformers import AutoModelForCausalLM
from repdisp.core.models import prepare
spec = {spec!r}
folder = prepare(spec) if not spec.endswith('.gguf') else None
t = time.perf_counter()
if folder is not None:
    m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
else:
    from pathlib import Path
    p = Path(spec)
    m = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
print(json.dumps({{'load_s': time.perf_counter() - t, 'rss': rss()}}))
"""
)


def _run(code: str, home: str | None = None) -> dict:
    env = dict(os.environ, REPDISP_HOME=home) if home else None
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env
    )
    if out.returncode != 0:
        raise SystemExit(f"subprocess failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(spec: str, load: bool) -> dict:
    base = _run(BASELINE)["rss"]
    s = _run(SCORE.format(spec=spec))
    # End to end in a fresh $REPDISP_HOME: first without, then with the cached token sets.
    path = str(converted_dir(spec)) if spec in BUNDLED else spec
    with tempfile.TemporaryDirectory() as home:
        e = _run(E2E.format(spec=path), home)
        warm = _run(E2E.format(spec=path), home)
    rows, cols = s["shape"]
    tensor_bytes = rows * cols * 4  # float32 (safetensors) / dequantised float32 (GGUF)
    res = {
        "model": spec,
        "kind": s["kind"],
        "tensor": s["tensor"],
        "shape": s["shape"],
        "tensor_mib_fp32": tensor_bytes / 2**20,
        "score_s": s["score_s"],
        "score_extra_rss_mib": (s["rss"] - s["rss_before"]) / 2**20,
        "e2e_s": e["e2e_s"],
        "e2e_rss_over_baseline_mib": (e["rss"] - base) / 2**20,
        "e2e_cached_tokens_s": warm["e2e_s"],
        "e2e_cached_tokens_rss_over_baseline_mib": (warm["rss"] - base) / 2**20,
        "baseline_rss_mib": base / 2**20,
    }
    if load:
        ld = _run(LOAD.format(spec=spec))
        res |= {
            "from_pretrained_s": ld["load_s"],
            "from_pretrained_rss_over_baseline_mib": (ld["rss"] - base) / 2**20,
            "score_over_load": s["score_s"] / ld["load_s"],
            "e2e_over_load": e["e2e_s"] / ld["load_s"],
            "e2e_cached_over_load": warm["e2e_s"] / ld["load_s"],
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="bundled name, folder or .gguf")
    ap.add_argument("--no-load", action="append", default=[], help="skip from_pretrained for this")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    results = []
    for spec in args.model or ["smollm2-135m", "gemma3-270m"]:
        r = bench(spec, spec not in args.no_load)
        results.append(r)
        line = (
            f"{Path(spec).name}: {r['kind']} {r['tensor']} {r['shape']} "
            f"({r['tensor_mib_fp32']:.0f} MiB fp32) | score {r['score_s'] * 1000:.1f} ms, "
            f"+{r['score_extra_rss_mib']:.1f} MiB | end-to-end (with tokenizer) "
            f"{r['e2e_s']:.2f} s, +{r['e2e_rss_over_baseline_mib']:.0f} MiB over baseline | "
            f"cached token sets {r['e2e_cached_tokens_s']:.3f} s, "
            f"+{r['e2e_cached_tokens_rss_over_baseline_mib']:.0f} MiB"
        )
        if "from_pretrained_s" in r:
            line += (
                f" | from_pretrained {r['from_pretrained_s']:.2f} s "
                f"(+{r['from_pretrained_rss_over_baseline_mib']:.0f} MiB): score/load "
                f"{r['score_over_load']:.4f}, end-to-end/load {r['e2e_over_load']:.3f} "
                f"(cached {r['e2e_cached_over_load']:.3f})"
            )
        print(line, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
