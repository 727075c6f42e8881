"""The speed paths keep their results: the token-stream cache (content keys, corruption, no
stale hits), BLAS limits that never leak out of CosineStats.update, and the float32
within-segment dispersion against a float64 brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from repdisp.core import tokcache
from repdisp.core.corpus import load_texts, make_segments, token_stream
from repdisp.core.extract import _within
from repdisp.core.geometry import CosineStats


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("REPDISP_HOME", str(tmp_path))
    tokcache.clear_memory()
    yield tmp_path
    tokcache.clear_memory()


def _counting(calls):
    def tokenize(tok, docs):
        calls.append(len(docs))
        return token_stream(tok, docs)

    return tokenize


def test_stream_tokenised_once_then_read_from_disk(home, tiny_tokenizer):
    docs = load_texts("python-docs")[:40]
    calls: list[int] = []
    first = tokcache.cached_stream(tiny_tokenizer, docs, _counting(calls))
    np.testing.assert_array_equal(first, token_stream(tiny_tokenizer, docs))
    again = tokcache.cached_stream(tiny_tokenizer, docs, _counting(calls))
    assert len(calls) == 1 and again is first  # in memory
    tokcache.clear_memory()
    from_disk = tokcache.cached_stream(tiny_tokenizer, docs, _counting(calls))
    assert len(calls) == 1  # read back, not tokenised again
    np.testing.assert_array_equal(from_disk, first)
    assert len(list((home / "tokens").glob("*.npy"))) == 1


def test_changed_content_is_a_new_key(home, tiny_tokenizer):
    docs = load_texts("python-docs")[:10]
    calls: list[int] = []
    a = tokcache.cached_stream(tiny_tokenizer, docs, _counting(calls))
    edited = [docs[0] + " x"] + docs[1:]
    b = tokcache.cached_stream(tiny_tokenizer, edited, _counting(calls))
    joined = ["".join(docs[:2])] + docs[2:]  # same characters, other document boundaries
    c = tokcache.cached_stream(tiny_tokenizer, joined, _counting(calls))
    assert len(calls) == 3
    np.testing.assert_array_equal(b, token_stream(tiny_tokenizer, edited))
    np.testing.assert_array_equal(c, token_stream(tiny_tokenizer, joined))
    assert len(a) != len(b)


def test_other_tokenizer_content_is_a_new_key(tiny_tokenizer):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    copy = Tokenizer.from_str(tiny_tokenizer.backend_tokenizer.to_str())
    other = PreTrainedTokenizerFast(tokenizer_object=copy, eos_token="<|endoftext|>")
    docs = ["def f(x):\n    return x\n"]
    assert tokcache.stream_key(other, docs) == tokcache.stream_key(tiny_tokenizer, docs)
    other.add_tokens(["<extra>"])  # changes the serialised vocabulary
    assert tokcache.stream_key(other, docs) != tokcache.stream_key(tiny_tokenizer, docs)


def test_corrupt_stream_is_retokenised(home, tiny_tokenizer):
    docs = load_texts("python-docs")[:10]
    calls: list[int] = []
    good = tokcache.cached_stream(tiny_tokenizer, docs, _counting(calls)).copy()
    tokcache.clear_memory()
    npy = next((home / "tokens").glob("*.npy"))
    arr = np.load(npy)
    arr[3] += 1  # a flipped token, same length: only the checksum can tell
    np.save(npy, arr)
    again = tokcache.cached_stream(tiny_tokenizer, docs, _counting(calls))
    assert len(calls) == 2
    np.testing.assert_array_equal(again, good)
    rec = json.loads(npy.with_suffix(".json").read_text())
    assert rec["n"] == len(good)


def test_no_cache_writes_nothing_and_segments_match(home, tiny_tokenizer):
    plain = make_segments(tiny_tokenizer, "python-docs", 6, 24, seed=3, cache=False)
    assert not (home / "tokens").exists()
    tokcache.clear_memory()
    cached = make_segments(tiny_tokenizer, "python-docs", 6, 24, seed=3)
    np.testing.assert_array_equal(plain.ids, cached.ids)
    assert plain.ids.flags.writeable  # segments are a copy, not a view of the shared stream


def test_blas_limit_does_not_leak_out_of_update():
    def threads():
        info = {(i["internal_api"], i["filepath"]): i["num_threads"] for i in threadpool_info()}
        return info, torch.get_num_threads()

    before = threads()
    CosineStats().update(np.random.default_rng(0).normal(size=(5000, 64)))
    assert threads() == before


@pytest.mark.parametrize("spread", [1.0, 0.01])  # typical and narrow-cone tokens
def test_within_float32_vs_float64_brute_force(spread):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(1, 1, 96))
    h = base + spread * rng.normal(size=(5, 127, 96))
    ours = _within(torch.from_numpy(h.astype(np.float32))).numpy()
    ref = []
    for seg in h:
        u = seg / np.linalg.norm(seg, axis=1, keepdims=True)
        i, j = np.triu_indices(len(u), k=1)
        ref.append(np.mean(1.0 - (u @ u.T)[i, j]))
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)


def test_bf16_mixed_runs_products_in_bf16_and_keeps_the_residual_float32(tiny_gpt2, tiny_segments):
    """bf16-mixed: float32 weights and residual stream, bfloat16 products. Its NLL and states are
    close to float32's but not equal (autocast really ran), and a pure bfloat16 copy of the model
    is further from float32 in the residual stream."""
    import copy
    import dataclasses

    import torch

    from repdisp.core.extract import forward_sites

    ids = tiny_segments.ids
    sites = tiny_gpt2.parse_sites("0.attn,final")
    ref_vals, ref_nll = forward_sites(tiny_gpt2, ids, sites, perplexity=True)
    mixed = dataclasses.replace(tiny_gpt2, identity="tiny-gpt2:bf16-mixed", autocast=torch.bfloat16)
    vals, nll = forward_sites(mixed, ids, sites, perplexity=True)
    assert next(mixed.model.parameters()).dtype == torch.float32
    assert vals["final"].dtype == torch.float32 and nll.dtype == torch.float32
    d_mixed = (nll - ref_nll).abs().max().item()
    assert 0 < d_mixed < 0.05
    half = dataclasses.replace(
        tiny_gpt2, model=copy.deepcopy(tiny_gpt2.model).to(torch.bfloat16), dtype=torch.bfloat16
    )
    hvals, _ = forward_sites(half, ids, sites, perplexity=True)
    err_mixed = (vals["0.attn"].float() - ref_vals["0.attn"]).abs().max().item()
    err_half = (hvals["0.attn"].float() - ref_vals["0.attn"]).abs().max().item()
    assert 0 < err_mixed < err_half


def test_bf16_mixed_is_its_own_cache_identity(tiny_gpt2_dir):
    from repdisp.core.models import load_model

    a = load_model(str(tiny_gpt2_dir), device="cpu", dtype="float32")
    b = load_model(str(tiny_gpt2_dir), device="cpu", dtype="bf16-mixed")
    assert a.autocast is None and b.autocast is not None
    assert b.dtype == a.dtype and b.identity != a.identity and b.identity.endswith(":bf16-mixed")
    assert (a.precision, b.precision) == ("float32", "bf16-mixed")
    from repdisp.io.results import model_provenance

    assert model_provenance(b)["dtype"] == "bf16-mixed"
