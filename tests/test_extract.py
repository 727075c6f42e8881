"""extract: perplexity, sites, poolings, early stop and the shard cache against hand computations
from the model's own full forward (HF logits, labels= loss, output_hidden_states)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from repdisp.core.corpus import make_segments
from repdisp.core.errors import RepdispError
from repdisp.core.extract import extract, token_nll
from repdisp.core.sites import SiteReader, blocks_of, parse_sites

ex_mod = importlib.import_module("repdisp.core.extract")  # the package exports a function of that name


def hf_forward(lm, ids):
    """HF's own forward with every hidden state and the full logits (the reference)."""
    with torch.inference_mode():
        return lm.model(torch.from_numpy(ids), output_hidden_states=True, use_cache=False)


def nll_by_hand(logits, ids):
    """Per-token NLL of ids[:, 1:] from full logits, via float64 log_softmax."""
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    tgt = torch.from_numpy(ids[:, 1:])
    return -logp.gather(2, tgt[..., None])[..., 0].numpy()


def attn_by_hand(lm, ids, block):
    """h_att of ``block`` = block input + attention module output, from our own hooks."""
    blk = blocks_of(lm.model)[block]
    attn = getattr(blk, "self_attn", None) or blk.attn
    seen = {}

    def pre(mod, args, kwargs):
        seen["in"] = args[0] if args else kwargs["hidden_states"]

    def post(mod, args, out):
        seen["attn"] = out[0] if isinstance(out, tuple) else out

    handles = [
        blk.register_forward_pre_hook(pre, with_kwargs=True),
        attn.register_forward_hook(post),
    ]
    try:
        hf_forward(lm, ids)
    finally:
        for h in handles:
            h.remove()
    return (seen["in"] + seen["attn"]).numpy()


def read_sites(lm, ids, names):
    """Raw (B, T, d) tensors of our SiteReader, full forward."""
    sites = parse_sites(names, len(blocks_of(lm.model)))
    with torch.inference_mode(), SiteReader(lm.model, sites, stop_early=False) as r:
        lm.model.base_model(input_ids=torch.from_numpy(ids), use_cache=False)
        return {k: v.numpy() for k, v in r.values.items()}


def check_perplexity(lm, segs, rtol):
    ex = extract(
        lm, segs, "final", "last", perplexity=True, batch_size=2, cache=False, progress=False
    )
    nll = nll_by_hand(hf_forward(lm, segs.ids).logits, segs.ids)
    np.testing.assert_allclose(ex.mean_nll, nll.mean(1), rtol=rtol)
    np.testing.assert_allclose(ex.seq_ppl, np.exp(nll.mean(1)), rtol=rtol)
    np.testing.assert_allclose(ex.last_nll, nll[:, -1], rtol=rtol, atol=1e-5)
    np.testing.assert_allclose(ex.last_ppl, np.exp(nll[:, -1]), rtol=rtol, atol=1e-5)


def check_token_nll_vs_labels(lm, ids):
    x = torch.from_numpy(ids)
    with torch.inference_mode():
        loss = lm.model(x, labels=x, use_cache=False).loss.item()
        hidden = lm.model.base_model(input_ids=x, use_cache=False)[0]
        ours = token_nll(lm.model, hidden, x)
    assert ours.shape == (ids.shape[0], ids.shape[1] - 1)
    assert ours.double().mean().item() == pytest.approx(loss, rel=1e-5)


def check_sites_vs_hidden_states(lm, ids):
    n = len(blocks_of(lm.model))
    hs = [h.numpy() for h in hf_forward(lm, ids).hidden_states]
    assert len(hs) == n + 1
    got = read_sites(lm, ids, "everything")
    np.testing.assert_allclose(got["embed"], hs[0], rtol=1e-5, atol=1e-5)
    for i in range(n - 1):  # hidden_states[n] is after the final norm, so the last block differs
        np.testing.assert_allclose(got[f"{i}.ffn"], hs[i + 1], rtol=1e-4, atol=1e-4)
    # "final" comes from the body's own output
    ex = extract(
        lm,
        _as_segments(ids),
        "everything",
        ["last", "tokens"],
        perplexity=False,
        skip_first=1,
        cache=False,
        progress=False,
    )
    np.testing.assert_allclose(ex.get("final", "last"), hs[n][:, -1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ex.get("embed", "last"), hs[0][:, -1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ex.get("0.ffn", "last"), hs[1][:, -1], rtol=1e-4, atol=1e-4)
    tokens = ex.get("final", "tokens")
    assert tokens.dtype == np.float16 and tokens.shape == hs[n][:, 1:].shape
    np.testing.assert_allclose(tokens, hs[n][:, 1:], rtol=2e-3, atol=2e-3)
    return got


def check_attn(lm, ids, blocks):
    n = len(blocks_of(lm.model))
    got = read_sites(lm, ids, [f"{b}.attn" for b in blocks])  # negative b resolve to b + n
    for b in blocks:
        want = attn_by_hand(lm, ids, b % n)
        np.testing.assert_allclose(got[f"{b % n}.attn"], want, rtol=1e-5, atol=1e-5)


def _as_segments(ids):
    from repdisp.core.corpus import Segments

    return Segments(ids, np.arange(len(ids)), False, "test")


# ---------------------------------------------------------------- tiny random GPT-2


def test_perplexity_by_hand_tiny(tiny_gpt2, tiny_segments):
    check_perplexity(tiny_gpt2, tiny_segments, rtol=1e-5)


def test_token_nll_vs_labels_loss_tiny(tiny_gpt2, tiny_segments, monkeypatch):
    check_token_nll_vs_labels(tiny_gpt2, tiny_segments.ids)
    # many small logit chunks give the same numbers
    monkeypatch.setattr(ex_mod, "_LOGIT_BYTES", 4 * 512 * 7)
    check_token_nll_vs_labels(tiny_gpt2, tiny_segments.ids)


def test_sites_equal_hidden_states_tiny(tiny_gpt2, tiny_segments):
    check_sites_vs_hidden_states(tiny_gpt2, tiny_segments.ids)


def test_attn_site_by_hand_tiny(tiny_gpt2, tiny_segments):
    check_attn(tiny_gpt2, tiny_segments.ids, [0, 1])


def test_early_stop_same_vectors_and_skips_later_blocks(tiny_gpt2, tiny_segments):
    full = extract(
        tiny_gpt2,
        tiny_segments,
        ["embed", "0.attn", "0.ffn"],
        ["last", "mean"],
        perplexity=True,
        cache=False,
        progress=False,
    )
    calls = []
    blocks = blocks_of(tiny_gpt2.model)
    h1 = blocks[1].register_forward_pre_hook(lambda *a: calls.append(1))
    h2 = tiny_gpt2.model.lm_head.register_forward_pre_hook(lambda *a: calls.append(2))
    try:
        early = extract(
            tiny_gpt2,
            tiny_segments,
            ["embed", "0.attn", "0.ffn"],
            ["last", "mean"],
            perplexity=False,
            cache=False,
            progress=False,
        )
    finally:
        h1.remove()
        h2.remove()
    assert calls == []  # block 1 and the LM head never ran
    for key in full.vectors:
        np.testing.assert_array_equal(early.vectors[key], full.vectors[key])
    with pytest.raises(RepdispError, match="perplexity was not computed"):
        _ = early.seq_ppl


def test_pools_vs_brute_force(tiny_gpt2, tiny_segments):
    skip = 2
    ex = extract(
        tiny_gpt2,
        tiny_segments,
        ["0.attn", "final"],
        ["last", "mean", "within", "tokens"],
        perplexity=False,
        skip_first=skip,
        cache=False,
        progress=False,
    )
    raw = read_sites(tiny_gpt2, tiny_segments.ids, ["0.attn"])["0.attn"]
    ref = {
        "0.attn": raw,
        "final": hf_forward(tiny_gpt2, tiny_segments.ids).hidden_states[-1].numpy(),
    }
    for site, h in ref.items():
        h = h[:, skip:].astype(np.float64)
        np.testing.assert_allclose(ex.get(site, "last"), h[:, -1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ex.get(site, "mean"), h.mean(1), rtol=1e-5, atol=1e-6)
        within = []
        for seg in h:  # brute force: mean over token pairs i<j of the cosine distance
            u = seg / np.linalg.norm(seg, axis=1, keepdims=True)
            i, j = np.triu_indices(len(u), k=1)
            within.append(np.mean(1.0 - (u @ u.T)[i, j]))
        np.testing.assert_allclose(ex.get(site, "within"), within, rtol=1e-6)
        np.testing.assert_allclose(ex.get(site, "tokens"), h, rtol=2e-3, atol=2e-3)
    with pytest.raises(RepdispError, match="was not extracted"):
        ex.get("embed", "last")


def test_bad_arguments(tiny_gpt2, tiny_segments):
    with pytest.raises(RepdispError, match="unknown pooling"):
        extract(tiny_gpt2, tiny_segments, "final", "max", cache=False, progress=False)
    with pytest.raises(RepdispError, match="skip-first"):
        extract(
            tiny_gpt2, tiny_segments, "final", "mean", skip_first=23, cache=False, progress=False
        )
    with pytest.raises(RepdispError, match="unknown site"):
        extract(tiny_gpt2, tiny_segments, "7.attn", cache=False, progress=False)


def _count_forwards(lm):
    calls = []
    handle = lm.model.base_model.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls, handle


def test_cache_reuses_shards_and_recomputes_corrupt_ones(tiny_gpt2, tiny_segments, tmp_path):
    kw = dict(
        sites=["0.ffn", "final"],
        pools=["last", "within"],
        batch_size=2,
        shard_segments=2,
        cache=tmp_path / "run",
        progress=False,
    )
    calls, h = _count_forwards(tiny_gpt2)
    try:
        first = extract(tiny_gpt2, tiny_segments, **kw)
        assert len(calls) == 3  # 6 segments, batches of 2
        shards = sorted((tmp_path / "run").glob("shard_*.npz"))
        assert len(shards) == 3 and (tmp_path / "run" / "manifest.json").exists()

        calls.clear()
        second = extract(tiny_gpt2, tiny_segments, **kw)
        assert calls == []  # everything came from the shards
        for key in first.vectors:
            np.testing.assert_array_equal(second.vectors[key], first.vectors[key])
        np.testing.assert_array_equal(second.mean_nll, first.mean_nll)

        data = bytearray(shards[1].read_bytes())  # flip bytes inside shard 1
        data[len(data) // 2] ^= 0xFF
        data[len(data) // 2 + 1] ^= 0xFF
        shards[1].write_bytes(bytes(data))
        calls.clear()
        third = extract(tiny_gpt2, tiny_segments, **kw)
        assert len(calls) == 1  # only the corrupted shard was recomputed
        for key in first.vectors:
            np.testing.assert_array_equal(third.vectors[key], first.vectors[key])
        np.testing.assert_array_equal(third.last_nll, first.last_nll)

        calls.clear()
        extract(tiny_gpt2, tiny_segments, **kw)  # the rewritten shard is valid again
        assert calls == []
    finally:
        h.remove()


def test_cache_key_separates_different_requests(tiny_gpt2, tiny_segments, tmp_path, monkeypatch):
    monkeypatch.setenv("REPDISP_HOME", str(tmp_path))  # this test writes default-location shards
    calls, h = _count_forwards(tiny_gpt2)
    try:
        extract(tiny_gpt2, tiny_segments, "final", "last", batch_size=6, progress=False)
        extract(tiny_gpt2, tiny_segments, "final", "mean", batch_size=6, progress=False)
        other = make_segments(tiny_gpt2.tokenizer, "python-docs", 6, 24, seed=1)
        extract(tiny_gpt2, other, "final", "last", batch_size=6, progress=False)
        assert len(calls) == 3  # new pooling, new segments: no stale reuse
        extract(tiny_gpt2, tiny_segments, "final", "last", batch_size=6, progress=False)
        assert len(calls) == 3
    finally:
        h.remove()
    assert len(list((tmp_path / "runs").iterdir())) == 3


# ---------------------------------------------------------------- real SmolLM2-135M


@pytest.fixture(scope="module")
def smol_segments(smollm2):
    return make_segments(smollm2.tokenizer, "python-docs", 3, 48, seed=0)


@pytest.mark.slow
def test_perplexity_by_hand_smollm2(smollm2, smol_segments):
    check_perplexity(smollm2, smol_segments, rtol=1e-4)


@pytest.mark.slow
def test_token_nll_vs_labels_loss_smollm2(smollm2, smol_segments):
    check_token_nll_vs_labels(smollm2, smol_segments.ids)


@pytest.mark.slow
def test_sites_and_attn_smollm2(smollm2, smol_segments):
    ids = smol_segments.ids[:2]
    check_sites_vs_hidden_states(smollm2, ids)
    check_attn(smollm2, ids, [0, 15, -1])


@pytest.mark.slow
def test_early_stop_block15_smollm2(smollm2, smol_segments):
    kw = dict(sites=["15.attn", "15"], pools=["last", "mean"], cache=False, progress=False)
    full = extract(smollm2, smol_segments, perplexity=True, **kw)
    early = extract(smollm2, smol_segments, perplexity=False, **kw)
    for key in full.vectors:
        np.testing.assert_allclose(early.vectors[key], full.vectors[key], rtol=1e-6, atol=1e-6)
