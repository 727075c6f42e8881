"""Scale-out and resumability: 2-process gloo runs equal 1-process runs, SIGKILL + rerun gives
the same JSON, corrupt shards are recomputed, and the cache key covers what changes results."""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from repdisp import extract, load_model, make_segments, measure
from repdisp.cli import main
from repdisp.core.extract import cache_key
from repdisp.core.shards import ShardStore

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--segments", "12", "--seq-len", "16", "--batch-size", "2", "--shard-segments", "2"]
RUN += ["--site", "final", "--site", "0.attn", "--bootstrap", "50", "--quiet"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_seconds(path: Path) -> dict:
    result = json.loads(path.read_text())
    result.pop("seconds")  # wall time is the only field allowed to differ
    return result


@pytest.fixture
def one_thread():
    """Same kernels as the 1-thread subprocesses, so in-process references are bit-equal."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_torchrun_two_gloo_processes_match_one_process(tiny_gpt2_dir, tmp_path, one_thread):
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), "-m", "repdisp", "measure"]
    cmd += [
        "--model",
        str(tiny_gpt2_dir),
        *RUN,
        "--cache-dir",
        str(tmp_path / "c"),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("wrote") == 1  # only rank 0 reports
    assert sorted(p.name for p in (tmp_path / "c").glob("shard_*.npz")) == [
        f"shard_{i:05d}.npz" for i in range(6)
    ]

    single = measure(
        load_model(str(tiny_gpt2_dir), "cpu", "float32"),
        sites=["final", "0.attn"],
        segments=12,
        seq_len=16,
        batch_size=2,
        bootstrap=50,
        cache=False,
        progress=False,
        shard_segments=2,
    ).to_dict()
    dist = json.loads((out / "measure.json").read_text())
    for key in ("mean_ppl", "median_ppl", "token_ppl", "mean_last_token_ppl"):
        assert dist[key] == pytest.approx(single[key], rel=1e-12, abs=1e-9)
    for d, s in zip(dist["sites"], single["sites"], strict=True):
        assert d["site"] == s["site"]
        assert abs(d["dispersion"] - s["dispersion"]) < 1e-9
        assert (d["ci_low"], d["ci_high"]) == (s["ci_low"], s["ci_high"])  # same vectors


def test_ranks_split_shards_and_sums_merge_exactly(tiny_gpt2, tiny_tokenizer):
    from repdisp.analyses.measure import _sums
    from repdisp.core.geometry import dispersion

    segs = make_segments(tiny_tokenizer, "python-docs", 10, 16, seed=1)
    kw = dict(sites="final", batch_size=2, cache=False, progress=False, shard_segments=4)
    whole = extract(tiny_gpt2, segs, **kw)
    parts = [extract(tiny_gpt2, segs, rank=r, world_size=2, **kw) for r in range(2)]
    # shards of 4: rank 0 gets shards 0, 2 (rows 0-3, 8-9), rank 1 gets shard 1 (rows 4-7)
    x = whole.get("final")
    np.testing.assert_array_equal(parts[0].get("final"), x[np.r_[0:4, 8:10]])
    np.testing.assert_array_equal(parts[1].get("final"), x[4:8])
    # three processes and only three shards: the fourth process would hold nothing
    empty = extract(tiny_gpt2, segs, rank=3, world_size=4, **kw)
    assert empty.vectors == {} and empty.mean_nll is None

    total = sum(_sums(p, ["final"], "last", 32) for p in parts)
    u = x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(total[:32], u.sum(0), rtol=1e-12, atol=1e-12)
    assert total[32] == 10
    s = total[:32]
    assert 1 - (s @ s - 10) / 90 == pytest.approx(dispersion(x), abs=1e-12)
    np.testing.assert_allclose(
        total[-4:],
        [whole.mean_nll.sum(), whole.seq_ppl.sum(), whole.last_ppl.sum(), 10],
        rtol=1e-12,
    )
    assert _sums(empty, ["final"], "last", 32).tolist() == [0.0] * 37


def test_multi_process_run_refuses_no_cache(tiny_gpt2, monkeypatch):
    from repdisp.core.errors import RepdispError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RepdispError, match="shard cache"):
        measure(tiny_gpt2, segments=4, seq_len=16, cache=False, progress=False)


_SLOW_SAVES = """
import sys, time
from repdisp.core.shards import ShardStore
save = ShardStore.save
def slow_save(self, *args):
    save(self, *args)
    time.sleep(0.4)
ShardStore.save = slow_save
from repdisp.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_then_rerun_is_identical(tiny_gpt2_dir, tmp_path, one_thread):
    cache, out = tmp_path / "cache", tmp_path / "resumed"
    args = ["measure", "--model", str(tiny_gpt2_dir), *RUN, "--cache-dir", str(cache)]
    args += ["--out", str(out)]
    # Saves are slowed (0.4 s each) only so that the kill surely lands mid-run.
    log = tmp_path / "victim.log"
    with open(log, "w") as f:
        victim = subprocess.Popen(
            [sys.executable, "-c", _SLOW_SAVES, *args], env=_env(), stdout=f, stderr=f
        )
    deadline = time.monotonic() + 90
    while not (cache / "shard_00000.json").exists():
        assert victim.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = sorted(p.name for p in cache.glob("shard_*.json"))
    assert 1 <= len(done) < 6 and not (out / "measure.json").exists()
    first = (cache / "shard_00000.npz").stat().st_mtime_ns

    assert main(args) == 0  # the same command again (in this process, to save start-up time)
    assert (cache / "shard_00000.npz").stat().st_mtime_ns == first  # reused, not recomputed
    assert not list(cache.glob(".shard_*"))  # no temp files left behind

    reference = tmp_path / "reference"
    ref_args = ["measure", "--model", str(tiny_gpt2_dir), *RUN]
    assert main([*ref_args, "--cache-dir", str(tmp_path / "ref"), "--out", str(reference)]) == 0
    assert _without_seconds(out / "measure.json") == _without_seconds(reference / "measure.json")


def test_corrupt_partial_or_foreign_shards_are_recomputed(tiny_gpt2, tiny_segments, tmp_path):
    ex = importlib.import_module("repdisp.core.extract")  # the package attribute is the function

    kw = dict(sites="final", batch_size=2, shard_segments=2, progress=False, cache=tmp_path)
    clean = extract(tiny_gpt2, tiny_segments, **kw).get("final")
    shard = tmp_path / "shard_00001.npz"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte
    shard.write_bytes(bytes(blob))
    (tmp_path / "shard_00002.npz").write_bytes(b"PK\x03\x04 partial")  # a torn write
    record = tmp_path / "shard_00000.json"
    rec = json.loads(record.read_text())
    record.write_text(json.dumps(rec | {"key": "another-run"}))

    store = ShardStore(tmp_path, {"key": rec["key"]})
    assert store.load(0) is None and store.load(1) is None and store.load(2) is None

    calls = []
    forward = ex._forward_batch

    def counting(lm, ids, *a):
        calls.append(len(ids))
        return forward(lm, ids, *a)

    ex._forward_batch = counting
    try:
        again = extract(tiny_gpt2, tiny_segments, **kw).get("final")
        calls_after_repair = len(calls)
        extract(tiny_gpt2, tiny_segments, **kw)
    finally:
        ex._forward_batch = forward
    assert calls_after_repair == 3  # the three bad shards, one batch each
    assert len(calls) == 3  # then everything is read back
    np.testing.assert_array_equal(again, clean)


def test_changed_shard_size_never_reuses_misaligned_shards(tiny_gpt2, tiny_segments, tmp_path):
    kw = dict(sites="final", progress=False, cache=tmp_path)
    first = extract(tiny_gpt2, tiny_segments, batch_size=2, shard_segments=2, **kw)
    # same key and folder, but shard 0 now covers rows 0-3 instead of 0-1
    second = extract(tiny_gpt2, tiny_segments, batch_size=2, shard_segments=4, **kw)
    assert second.get("final").shape == (6, 32)
    np.testing.assert_allclose(second.get("final"), first.get("final"), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second.mean_nll, first.mean_nll, rtol=1e-6)


def test_cache_key_covers_everything_that_changes_results(tiny_gpt2_dir, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    words = " ".join(f"word{i}" for i in range(300))
    data, edited, other = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    data.write_text(words)
    edited.write_text(words.replace("word7 ", "drow7 "))
    other.write_text(words.upper())

    lm = load_model(str(tiny_gpt2_dir), "cpu", "float32")

    def segs(source=data, n=6, seq_len=16, seed=0):
        return make_segments(lm.tokenizer, str(source), n, seq_len, seed)

    def key(model=lm, s=None, sites=("final",), pools=("last",), ppl=True, skip=1):
        return cache_key(model, s or segs(), list(sites), list(pools), ppl, skip)

    base = key()
    assert key() == base  # deterministic

    changed_weights, renamed = tmp_path / "changed", tmp_path / "renamed"
    shutil.copytree(tiny_gpt2_dir, changed_weights)
    shutil.copytree(tiny_gpt2_dir, renamed)
    tensors = load_file(str(changed_weights / "model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(changed_weights / "model.safetensors"), metadata={"format": "pt"})

    variants = {
        "weights": key(model=load_model(str(changed_weights), "cpu", "float32")),
        "model name": key(model=load_model(str(renamed), "cpu", "float32")),
        "dtype": key(model=load_model(str(tiny_gpt2_dir), "cpu", "bfloat16")),
        "data source": key(s=segs(other)),
        "data content": key(s=segs(edited, n=None)),  # every window, so the edit is in one
        "seed": key(s=segs(seed=1)),
        "n segments": key(s=segs(n=7)),
        "seq len": key(s=segs(seq_len=17)),
        "sites": key(sites=("final", "0.attn")),
        "pooling": key(pools=("mean",)),
        "perplexity": key(ppl=False),
        "skip first": key(skip=2),
    }
    assert key(s=segs(n=None)) != variants["data content"]
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants), variants
