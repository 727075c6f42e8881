"""Host memory that does not grow with the tokens of a segment: what one batch hands back to the
shard is the pooled rows only (a view of the (B, T, d) hidden states would keep them all alive
until the shard is written: 30 sites x T x d x 4 bytes per segment on SmolLM2)."""

from __future__ import annotations

import importlib

import numpy as np
import torch

ex_mod = importlib.import_module("repdisp.core.extract")


def _own_bytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def test_batch_outputs_hold_only_their_own_rows(tiny_gpt2):
    """Every tensor a batch returns owns exactly its own elements (no per-token storage behind a
    per-segment row), and the rows still equal HF's hidden states and a by-hand NLL."""
    lm = tiny_gpt2
    rng = np.random.default_rng(0)
    ids = rng.integers(0, lm.model.config.vocab_size, (4, 24))
    sites = lm.parse_sites("all,final")
    out = ex_mod._forward_batch(lm, ids, sites, ["last", "mean", "within"], True, 1)
    assert set(out) >= {"final/last", "final/mean", "final/within", "mean_nll", "last_nll"}
    for key, t in out.items():
        assert _own_bytes(t) == t.numel() * t.element_size(), key
        assert t.shape[0] == 4 and t.ndim <= 2, key
    with torch.inference_mode():
        ref = lm.model(torch.from_numpy(ids), output_hidden_states=True, use_cache=False)
    final = ref.hidden_states[-1]
    np.testing.assert_allclose(out["final/last"].numpy(), final[:, -1].numpy(), atol=1e-5)
    np.testing.assert_allclose(out["final/mean"].numpy(), final[:, 1:].mean(1).numpy(), atol=1e-5)
    logp = torch.log_softmax(ref.logits[:, :-1].double(), -1)
    nll = -logp.gather(2, torch.from_numpy(ids[:, 1:])[..., None])[..., 0]
    np.testing.assert_allclose(out["last_nll"].numpy(), nll[:, -1].numpy(), rtol=1e-4)
    np.testing.assert_allclose(out["mean_nll"].numpy(), nll.mean(1).numpy(), rtol=1e-4)


def test_last_pool_copies_in_any_dtype():
    """``last`` of a float32 batch is a copy (``.float()`` would return a view), and of a
    bfloat16 batch a float32 copy of the same values."""
    h = torch.randn(3, 7, 5)
    for x in (h, h.to(torch.bfloat16)):
        v = ex_mod._pool(x, "last", 1)
        assert v.dtype == torch.float32 and _own_bytes(v) == 3 * 5 * 4
        torch.testing.assert_close(v, x[:, -1].float(), rtol=0, atol=0)
