"""kNN-LM: the kNN distribution and interpolation against brute force, datastore keys against the
extraction engine, resume after an interrupted build, the whole evaluation against a float64
brute-force kNN-LM built from HF's own forward, and the key profile against direct dispersions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import repdisp.applications.knnlm.datastore as knn_mod
from repdisp.applications.knnlm import (
    Datastore,
    build_datastore,
    build_index,
    chunk_windows,
    interpolate,
    knn_log_prob,
    plan_windows,
)
from repdisp.applications.knnlm import (
    evaluate_knnlm as evaluate,
)
from repdisp.applications.knnlm.keys import profile_keys
from repdisp.cli import main
from repdisp.core.corpus import Segments, load_texts, token_stream
from repdisp.core.errors import RepdispError
from repdisp.core.extract import extract
from repdisp.core.geometry import dispersion


@pytest.fixture(scope="module")
def stream(tiny_tokenizer):
    return token_stream(tiny_tokenizer, load_texts("python-docs")[:40])


def brute_knn_prob(dist, vals, target, vocab, temperature):
    """p_kNN(target) from the full aggregated distribution, float64, one query."""
    p = np.zeros(vocab)
    w = np.exp(-(dist - dist[vals >= 0].min()) / temperature) * (vals >= 0)
    for v, wj in zip(vals, w, strict=True):
        if v >= 0:
            p[v] += wj
    return p[target] / p.sum()


def test_knn_distribution_and_interpolation_vs_brute_force():
    rng = np.random.default_rng(0)
    q, k, vocab = 50, 16, 12
    dist = rng.uniform(0, 30, (q, k))
    vals = rng.integers(0, vocab, (q, k))
    vals[:5, -3:] = -1  # missing neighbours (FAISS -1)
    targets = rng.integers(0, vocab, q)
    targets[0] = vocab + 1  # held by no neighbour
    p_lm = rng.dirichlet(np.ones(vocab + 2), q)[np.arange(q), targets]
    for temp in (0.5, 1.0, 7.0):
        got = knn_log_prob(dist, vals, targets, temp)
        ref = np.array(
            [brute_knn_prob(dist[i], vals[i], targets[i], vocab + 2, temp) for i in range(q)]
        )
        np.testing.assert_allclose(np.exp(got), ref, rtol=1e-10, atol=1e-300)
        assert got[0] == -np.inf
        for lam in (0.0, 0.25, 1.0):
            mix = interpolate(got, np.log(p_lm), lam)
            with np.errstate(divide="ignore"):
                np.testing.assert_allclose(mix, np.log(lam * ref + (1 - lam) * p_lm), rtol=1e-10)
    # huge distances: plain exp would underflow to 0/0, log space does not
    big = knn_log_prob(dist + 1e5, vals, targets, 1.0)
    np.testing.assert_allclose(big, knn_log_prob(dist, vals, targets, 1.0), rtol=1e-9)
    with pytest.raises(RepdispError):
        interpolate(big, big, 1.5)


@pytest.mark.parametrize("n,context,stride", [(100, 16, 8), (101, 16, 16), (10, 16, 4), (57, 5, 1)])
def test_windows_cover_each_target_once(n, context, stride):
    seen = []
    for b, e, new in plan_windows(n, context, stride):
        assert e - b <= context and b < new <= e
        assert new - b >= min(context - stride, new - b)  # at least context - stride of context
        seen += range(new, e)
    lost = (
        {t for t in range(1, n) if t % stride == 0 and t >= context} if stride == context else set()
    )
    assert sorted(seen) == sorted(set(range(1, n)) - lost)


def window_segments(stream, windows):
    return Segments(
        np.stack([stream[b:e] for b, e, _ in windows]), np.arange(len(windows)), False, "t"
    )


@pytest.mark.parametrize("stride", [24, 10])
def test_datastore_keys_equal_extraction(tiny_gpt2, stream, tmp_path, stride):
    tokens = stream[: 24 * 12]
    sites = ["0.attn", "1.ffn", "final"]
    build_datastore(
        tiny_gpt2,
        tokens,
        tmp_path,
        sites=sites,
        context=24,
        stride=stride,
        batch_size=4,
        shard_windows=3,
        progress=False,
    )
    store = Datastore.open(tmp_path)
    windows = plan_windows(len(tokens), 24, stride)
    full = [w for w in windows if w[1] - w[0] == 24]
    ex = extract(
        tiny_gpt2,
        window_segments(tokens, full),
        sites,
        "tokens",
        perplexity=False,
        batch_size=4,
        skip_first=0,
        cache=False,
        progress=False,
    )
    rows = 0
    for j, (b, e, new) in enumerate(full):
        n = e - new
        np.testing.assert_array_equal(store.values()[rows : rows + n], tokens[new:e])
        for s in sites:
            np.testing.assert_array_equal(
                store.keys(s)[rows : rows + n], ex.get(s, "tokens")[j, new - b - 1 : e - b - 1]
            )
        rows += n
    assert rows == store.meta["n_keys"] - sum(e - new for b, e, new in windows if e - b < 24)


def test_resume_after_interrupted_build(tiny_gpt2, stream, tmp_path, monkeypatch):
    tokens = stream[:400]
    kw = dict(
        sites="-1.ffn,0.attn", context=32, stride=16, batch_size=4, shard_windows=5, progress=False
    )
    ref = build_datastore(tiny_gpt2, tokens, tmp_path / "ref", **kw)
    real, calls = knn_mod._fill_shard, []

    def crash_after_first(*a, **k):
        if calls:
            raise KeyboardInterrupt("simulated crash")
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(knn_mod, "_fill_shard", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        build_datastore(tiny_gpt2, tokens, tmp_path / "run", **kw)
    with pytest.raises(RepdispError, match="unfinished"):
        Datastore.open(tmp_path / "run")
    monkeypatch.setattr(knn_mod, "_fill_shard", real)
    again = build_datastore(tiny_gpt2, tokens, tmp_path / "run", **kw)
    assert (again.shards_reused, again.shards_computed) == (1, ref.shards_computed - 1)
    a, b = Datastore.open(tmp_path / "ref"), Datastore.open(tmp_path / "run")
    np.testing.assert_array_equal(a.values(), b.values())
    for s in a.sites:
        np.testing.assert_array_equal(a.keys(s), b.keys(s))
        assert a.index(s).ntotal == b.index(s).ntotal == a.meta["n_keys"]
    with pytest.raises(RepdispError, match="different datastore"):
        build_datastore(tiny_gpt2, tokens[:300], tmp_path / "run", **kw)


def test_evaluation_vs_brute_force(tiny_gpt2, stream, tmp_path):
    train, held = stream[:600], stream[600:760]
    build_datastore(
        tiny_gpt2, train, tmp_path, sites="0.ffn", context=32, stride=16, progress=False
    )
    k, lam, temp = 8, 0.3, 4.0
    r = evaluate(
        tiny_gpt2,
        Datastore.open(tmp_path),
        held,
        k=k,
        lmbda=lam,
        temperature=temp,
        lmbda_grid=[0.0, 0.6],
        context=32,
        stride=16,
        batch_size=3,
        progress=False,
    )
    store = Datastore.open(tmp_path)
    keys, vals = store.keys("0.ffn").astype(np.float64), np.asarray(store.values())
    lp_lm, lp_mix = [], []
    for b, e, new in plan_windows(len(held), 32, 16):
        with torch.inference_mode():
            out = tiny_gpt2.model(torch.from_numpy(held[None, b:e]), output_hidden_states=True)
        logp = torch.log_softmax(out.logits[0].double(), -1).numpy()
        h = out.hidden_states[1][0].double().numpy()  # block 0 output = site 0.ffn
        for t in range(new, e):
            d = ((keys - h[t - b - 1]) ** 2).sum(1)
            nn = np.argsort(d)[:k]
            p_knn = brute_knn_prob(d[nn], vals[nn], held[t], 512, temp)
            p_lm = np.exp(logp[t - b - 1, held[t]])
            lp_lm.append(np.log(p_lm))
            lp_mix.append(np.log(lam * p_knn + (1 - lam) * p_lm))
    assert r.n_targets == len(held) - 1
    assert r.base_ppl == pytest.approx(np.exp(-np.mean(lp_lm)), rel=1e-5)
    assert r.sites[0].knn_ppl == pytest.approx(np.exp(-np.mean(lp_mix)), rel=1e-4)
    freq = np.bincount(vals, minlength=512)[held[1:]] / len(vals)
    uni = {x: np.exp(-np.mean(np.log(x * freq + (1 - x) * np.exp(lp_lm)))) for x in (0.0, 0.3, 0.6)}
    best = min(uni, key=uni.get)
    assert (r.unigram_lmbda, r.unigram_ppl) == (best, pytest.approx(uni[best], rel=1e-5))
    grid = {g["lmbda"]: g["ppl"] for g in r.sites[0].grid}
    assert grid[0.0] == pytest.approx(r.base_ppl, rel=1e-12)
    assert r.sites[0].best_ppl == min(grid.values())


def test_ivfpq_index_recall():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 16))
    keys = (centers[rng.integers(0, 20, 3000)] + 0.1 * rng.normal(size=(3000, 16))).astype(
        np.float16
    )
    index, info = build_index(keys, "ivfpq", nlist=8)
    assert info["kind"] == "ivfpq" and index.ntotal == 3000 and info["pq_bytes"] == 16
    index.nprobe = 8
    flat, _ = build_index(keys, "auto")
    q = keys[:50].astype(np.float32)
    _, approx = index.search(q, 1)
    _, exact = flat.search(q, 1)
    assert (approx[:, 0] == exact[:, 0]).mean() > 0.5
    assert ((np.asarray(keys[approx[:, 0]], np.float32) - q) ** 2).sum(1).mean() < 0.3


def test_profile_keys_vs_direct_dispersion(tiny_gpt2, stream):
    windows = chunk_windows(stream[: 40 * 16], 16, None, "t")
    prof = profile_keys(
        tiny_gpt2,
        windows,
        chunks=[5, 20],
        seeds=3,
        sites="final-block",
        cache=False,
        progress=False,
    )
    assert prof.sites == ["1.attn", "1.ffn"] and prof.n_windows == 40
    ex = extract(
        tiny_gpt2, windows, prof.sites, "last", perplexity=False, cache=False, progress=False
    )
    for s in prof.sites:
        for n in (5, 20):
            vals = [
                dispersion(ex.get(s)[np.sort(np.random.default_rng(seed).permutation(40)[:n])])
                for seed in range(3)
            ]
            row = prof.row(s, n)
            np.testing.assert_allclose(sorted(row.values), sorted(vals), rtol=1e-6)
            assert row.mean == pytest.approx(np.mean(vals)) and row.std == pytest.approx(
                np.std(vals)
            )
    assert prof.recommended == max(prof.sites, key=lambda s: prof.row(s, 20).mean)


def test_cli_build_eval_select(tiny_gpt2_dir, tmp_path, capsys):
    data = "python-docs@0:500"
    held = "python-docs@500:700"
    common = ["--model", str(tiny_gpt2_dir), "--quiet", "--context", "32", "--stride", "16"]
    assert (
        main(
            [
                "knnlm",
                "build",
                *common,
                "--data",
                data,
                "--site",
                "-1.attn",
                "--out",
                str(tmp_path / "ds"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "knnlm",
                "eval",
                *common,
                "--datastore",
                str(tmp_path / "ds"),
                "--data",
                held,
                "--k",
                "16",
                "--lmbda-grid",
                "0,0.5",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    assert (tmp_path / "ev" / "knnlm_eval.png").exists()
    assert (
        main(
            [
                "knnlm",
                "select",
                *common,
                "--train",
                data,
                "--eval",
                held,
                "--chunks",
                "10",
                "--seeds",
                "2",
                "--chunk-len",
                "16",
                "--k",
                "16",
                "--no-cache",
                "--out",
                str(tmp_path / "sel"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "highest-dispersion site gave the best kNN-LM perplexity" in out
    sel = json.loads((tmp_path / "sel" / "knnlm_select.json").read_text())
    assert (
        sel["margin_ci"][0] <= sel["margin_nats"] <= sel["margin_ci"][1] and sel["margin_nats"] >= 0
    )
    assert "log_p" not in sel["evaluation"] and len(sel["evaluation"]["sites"]) == 2
    assert (
        main(
            [
                "knn-keys",
                "--model",
                str(tiny_gpt2_dir),
                "--quiet",
                "--no-cache",
                "--data",
                "python-docs",
                "--chunks",
                "5,10",
                "--seeds",
                "2",
                "--chunk-len",
                "32",
                "--out",
                str(tmp_path / "keys"),
            ]
        )
        == 0
    )
    assert (tmp_path / "keys" / "knn_keys.csv").exists()
    assert main(["knnlm", "eval", *common, "--datastore", str(tmp_path), "--data", held]) == 2
