#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (under 8 minutes on one H200-class GPU; the time
# limits of the steps add up to 7.8 minutes):
#
#   0. `repdisp models prepare` for both bundled models (a no-op once converted)
#   1. the tests marked `cuda` (pytest -m cuda; they skip without CUDA)
#   2. bench/bench_e2e.py --device cuda at 2,000 segments x 512 tokens on each bundled model over
#      the built-in python-code + python-docs texts
#      (bfloat16, batch 64): tokens/s of each side and the repdisp/paper and repdisp/floor ratios
#   3. `repdisp layers` at every site of SmolLM2-135M on the GPU (1,000 x 512, 200 + 200
#      replicates of the segment-level statistics, which run on the GPU too)
#   4. kNN-LM search with a FAISS GPU index, when the installed FAISS has GPU support
#
# and the peak GPU memory of each step (nvidia-smi, sampled every 200 ms). On a machine without
# a CUDA GPU it prints one line and exits 0. Run it from a clone after `make install`:
#
#     bash bench/gpu_check.sh
#
# PYTHON overrides the interpreter (default: the clone's .venv/bin/python). A step that fails or
# runs past its time limit is reported and the others still run; the exit status is the number
# of failed steps (0: all passed).
set -u
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "gpu_check: $PY cannot import torch; run make install or set PYTHON" >&2
    exit 1
fi

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA GPU (torch.cuda.is_available() is False); nothing to check"
    exit 0
fi

OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
failed=0
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"# {p.name}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}")'
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); load $(cut -d' ' -f1-3 /proc/loadavg)"

# step NAME SECONDS CMD...: run CMD with a time limit, print its output and its peak GPU memory
step() {
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name (limit ${limit}s)"
    local smi=""
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 \
            >"$OUT/$name.mem" 2>/dev/null &
        smi=$!
    fi
    local t0=$SECONDS rc=0
    timeout "$limit" "$@" 2>&1 | tail -n 40
    rc=${PIPESTATUS[0]}
    [ -n "$smi" ] && kill "$smi" 2>/dev/null && wait "$smi" 2>/dev/null
    local peak="n/a"
    [ -s "$OUT/$name.mem" ] && peak="$(sort -n "$OUT/$name.mem" | tail -n 1) MiB"
    if [ "$rc" -eq 0 ]; then
        echo "-- $name: ok in $((SECONDS - t0)) s; peak GPU memory used $peak"
    else
        [ "$rc" -eq 124 ] && rc="timeout"
        echo "-- $name: FAILED ($rc) after $((SECONDS - t0)) s; peak GPU memory used $peak"
        failed=$((failed + 1))
    fi
}

# the built-in python-code and python-docs texts, one file each: enough 512-token windows for 2,000
"$PY" - "$OUT/corpus" <<'PYEOF' || exit 1
import sys
from pathlib import Path

from repdisp.core.corpus import load_texts

out = Path(sys.argv[1])
out.mkdir()
for name in ("python-code", "python-docs"):
    for i, text in enumerate(load_texts(name)):
        (out / f"{name}-{i:04d}.txt").write_text(text)
PYEOF

step prepare-models 90 bash -c 'for m in smollm2-135m gemma3-270m; do "$0" -m repdisp models prepare "$m" || exit 1; done' "$PY"
step cuda-tests 60 "$PY" -m pytest -q -m cuda tests -p no:cacheprovider
for model in smollm2-135m gemma3-270m; do
    step "e2e-$model" 110 "$PY" bench/bench_e2e.py --device cuda --model "$model" \
        --data "$OUT/corpus" --segments 2000 --seq-len 512
done
step layers-all-sites 60 "$PY" -m repdisp layers --device cuda --model smollm2-135m \
    --data "$OUT/corpus" --site all --segments 1000 --seq-len 512 --batch-size 64 \
    --bin-size 50 --bins 10 --stats-reps 200 --permutations 200 --bootstrap 500 \
    --no-cache --quiet --out "$OUT/layers" --overwrite
step knnlm-faiss-gpu 40 "$PY" - <<'EOF'
import time

import numpy as np

try:
    import faiss
except ImportError:
    print("FAISS is not installed: skipped (pip install 'repdisp[knnlm]' or faiss-gpu)")
    raise SystemExit(0)

if not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
    print("FAISS has no GPU support here (faiss-cpu): skipped; install faiss-gpu to check it")
    raise SystemExit(0)
from repdisp.applications.knnlm import build_index

rng = np.random.default_rng(0)
n, d, k, q = 1_000_000, 576, 1024, 1024
keys = rng.standard_normal((n, d), dtype=np.float32).astype(np.float16)
rows = rng.choice(n, q, replace=False)
queries = keys[rows].astype(np.float32) + 0.5 * rng.standard_normal((q, d), dtype=np.float32)
flat = faiss.IndexFlatL2(d)
flat.add(keys.astype(np.float32))
gpu = faiss.index_cpu_to_all_gpus(flat)
gpu.search(queries[:8], k)  # warm-up
t0 = time.perf_counter()
dist, ids = gpu.search(queries, k)
secs = time.perf_counter() - t0
t0 = time.perf_counter()
_, cpu_ids = flat.search(queries[:64], k)
cpu_secs = time.perf_counter() - t0
agree = float((cpu_ids[:, :10] == ids[:64, :10]).mean())
print(f"flat GPU: {q / secs:,.0f} queries/s at k={k} over {n:,} keys (CPU {64 / cpu_secs:,.0f}/s, "
      f"{q / secs / (64 / cpu_secs):.0f}x); recall@1 {(ids[:, 0] == rows).mean():.3f}; "
      f"top-10 ids equal to the CPU index for {agree:.3f}")
index, info = build_index(keys[:200_000], "ivfpq", nlist=1024, train_size=40_000)
index.nprobe = 32
_, ivf_ids = index.search(queries[rows < 200_000], k)
print(f"IVF-PQ built on the GPU: train {info['train_seconds']:.1f} s, add "
      f"{info['add_seconds']:.1f} s; recall@1 {(ivf_ids[:, 0] == rows[rows < 200_000]).mean():.3f}")
EOF

echo
echo "gpu_check: $failed step(s) failed"
exit "$failed"
