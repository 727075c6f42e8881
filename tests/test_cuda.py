"""The paths that only run on a CUDA GPU, each against the CPU path or a float64 reference
(marked ``cuda``: they skip without a GPU; ``bash bench/gpu_check.sh`` runs them), and the
check script's one line on a machine without one."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from repdisp.core.extract import extract, token_nll
from repdisp.core.models import LoadedModel
from repdisp.core.stats import across_stats

ROOT = Path(__file__).resolve().parents[1]


def cuda(test):
    """Marked ``cuda`` and skipped where torch sees no CUDA GPU."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    return pytest.mark.cuda(skip(test))


def _on_cuda(lm: LoadedModel, dtype=torch.float32) -> LoadedModel:
    net = copy.deepcopy(lm.model).to("cuda", dtype)
    return LoadedModel(net, lm.tokenizer, lm.name, lm.identity, torch.device("cuda"), dtype)


@cuda
def test_across_stats_gpu_equals_cpu():
    """The float64 GEMM path gives the CPU (scipy sparse) path's statistics to 1e-12."""
    rng = np.random.default_rng(0)
    n = 300
    ppl = np.exp(rng.normal(2, 0.5, n))
    vecs = [rng.normal(size=(n, 24)) + np.log(ppl)[:, None] * k for k in (0.0, 0.3)]
    binner = lambda p: np.array_split(np.argsort(p, kind="stable"), 6)  # noqa: E731
    kw = dict(curve_bins=10, reps=40, perms=40, seed=3)
    cpu = across_stats(ppl, vecs, binner, device="cpu", **kw)
    gpu = across_stats(ppl, vecs, binner, device="cuda", **kw)
    for a, b in zip(cpu, gpu, strict=True):
        for name in ("pearson", "spearman", "curve_spearman", "slope"):
            ea, eb = getattr(a, name), getattr(b, name)
            for f in ("value", "ci_low", "ci_high", "p_value", "p_perm"):
                assert getattr(eb, f) == pytest.approx(getattr(ea, f), abs=1e-10, nan_ok=True), (name, f)


@cuda
def test_extract_on_cuda_matches_cpu(tiny_gpt2, tiny_segments):
    """float32 on the GPU (pinned, asynchronous transfers) gives the CPU's vectors and NLLs."""
    kw = dict(sites="0.ffn,final", pools=["last", "mean", "within"], cache=False, progress=False)
    cpu = extract(tiny_gpt2, tiny_segments, batch_size=4, **kw)
    gpu = extract(_on_cuda(tiny_gpt2), tiny_segments, batch_size=4, **kw)
    assert sorted(gpu.vectors) == sorted(cpu.vectors)
    for k, v in cpu.vectors.items():
        np.testing.assert_allclose(gpu.vectors[k], v, rtol=1e-4, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(gpu.mean_nll, cpu.mean_nll, rtol=1e-5)
    np.testing.assert_allclose(gpu.last_nll, cpu.last_nll, rtol=1e-4)


@cuda
def test_token_nll_bf16_autocast_on_cuda(tiny_gpt2):
    """Under CUDA bf16 autocast the head is cast once; NLLs stay within bf16 rounding of the
    float64 log-softmax."""
    net = copy.deepcopy(tiny_gpt2.model).to("cuda")
    rng = np.random.default_rng(1)
    ids = torch.from_numpy(rng.integers(0, net.config.vocab_size, (3, 20))).cuda()
    with torch.inference_mode():
        hidden = net.base_model(input_ids=ids).last_hidden_state
        logits = net.get_output_embeddings()(hidden).double()
        ref = -torch.log_softmax(logits[:, :-1], -1).gather(2, ids[:, 1:, None])[..., 0]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = token_nll(net, hidden, ids)
    assert got.dtype == torch.float32 and got.shape == (3, 19)
    np.testing.assert_allclose(got.cpu().numpy(), ref.cpu().numpy(), rtol=2e-2, atol=2e-2)


@cuda
def test_faiss_gpu_index_finds_the_exact_neighbours():
    """An index cloned onto the GPU returns the brute-force float64 nearest neighbours (compared
    by their distances, so a float32 near-tie that swaps two of them cannot fail the test)."""
    faiss = pytest.importorskip("faiss")
    if not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
        pytest.skip("FAISS without GPU support")
    from repdisp.applications.knnlm import build_index

    rng = np.random.default_rng(2)
    keys = rng.standard_normal((2000, 32)).astype(np.float16)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    index, _ = build_index(keys, "flat")
    gpu = faiss.index_cpu_to_all_gpus(index)
    _, ids = gpu.search(queries, 5)
    d2 = ((queries[:, None].astype(np.float64) - keys[None].astype(np.float64)) ** 2).sum(-1)
    got = np.take_along_axis(d2, ids.astype(np.int64), axis=1)
    np.testing.assert_allclose(got, np.sort(d2, axis=1)[:, :5], rtol=1e-4)
    assert (ids[:, 0] == d2.argmin(1)).mean() >= 0.9


def test_gpu_check_without_cuda_prints_one_line():
    """On a machine without a CUDA GPU (here forced with CUDA_VISIBLE_DEVICES=) the check script
    prints exactly one line and exits 0."""
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    res = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "gpu_check: no CUDA GPU (torch.cuda.is_available() is False); nothing to check"
    ]
