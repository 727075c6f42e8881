"""TransformerLens hook names mean what TransformerLens means, checked against hand computations
from each model's weights: GPT-2 (learned positions; attention recomputed by hand), llama
(rotary, RMSNorm, gated MLP by hand) and parallel blocks (GPT-J, GPT-NeoX, Phi: block output =
input + attention branch + MLP branch, the MLP recomputed by hand). Names the architecture cannot
give (hook_pos_embed on rotary models, hook_resid_mid of a parallel block) are refused with one
line; results keep the name asked next to the canonical one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repdisp.core.errors import RepdispError
from repdisp.core.sites import SiteReader, check_sites, parse_sites

SMALL = dict(vocab_size=64, hidden_size=32, num_attention_heads=2, max_position_embeddings=64)
ALL = "hook_embed,hook_pos_embed,blocks.0.hook_resid_pre,blocks.0.hook_attn_out,"
ALL += "blocks.0.hook_resid_mid,blocks.0.hook_mlp_out,blocks.0.hook_resid_post,"
ALL += "blocks.1.hook_resid_post,ln_final.hook_normalized,final"
IDS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))


def _build(arch: str):
    import transformers as T

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = T.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=64)
        return T.GPT2LMHeadModel(cfg).eval()
    if arch == "llama":
        cfg = T.LlamaConfig(
            num_hidden_layers=2, intermediate_size=48, num_key_value_heads=2, **SMALL
        )
        return T.LlamaForCausalLM(cfg).eval()
    if arch == "gptj":
        cfg = T.GPTJConfig(
            n_layer=2, n_embd=32, n_head=2, vocab_size=64, rotary_dim=8, n_positions=64
        )
        return T.GPTJForCausalLM(cfg).eval()
    if arch == "gpt_neox":
        cfg = T.GPTNeoXConfig(num_hidden_layers=2, intermediate_size=48, **SMALL)
        return T.GPTNeoXForCausalLM(cfg).eval()
    if arch == "phi":
        return T.PhiForCausalLM(
            T.PhiConfig(num_hidden_layers=2, intermediate_size=48, **SMALL)
        ).eval()
    raise AssertionError(arch)


def _read(model, specs: str) -> dict[str, torch.Tensor]:
    sites = parse_sites(specs, 2)
    with torch.no_grad(), SiteReader(model, sites, stop_early=False) as r:
        model.base_model(input_ids=IDS, use_cache=False)
    return {s.requested or s.name: r.values[s.name].double() for s in sites}


def _ln(x, mod):  # nn.LayerNorm by hand
    x = x.double()
    x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(
        x.var(-1, unbiased=False, keepdim=True) + mod.eps
    )
    return x * mod.weight.double() + mod.bias.double()


def _gpt2_attn(x, attn, n_head=2):
    """GPT-2 attention by hand: Conv1D c_attn, causal softmax(q k^T / sqrt(hd)) v, c_proj."""
    b, t, d = x.shape
    qkv = x @ attn.c_attn.weight.double() + attn.c_attn.bias.double()
    q, k, v = (z.view(b, t, n_head, d // n_head).transpose(1, 2) for z in qkv.split(d, -1))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // n_head)
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
    return out @ attn.c_proj.weight.double() + attn.c_proj.bias.double()


def _gelu_new(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _close(got, want, tol=1e-5):
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=tol, atol=tol)


def test_gpt2_learned_positions_by_hand():
    m = _build("gpt2")
    v = _read(m, ALL)
    tr, blk = m.transformer, m.transformer.h[0]
    tok = tr.wte.weight.double()[IDS]
    pos = tr.wpe.weight.double()[torch.arange(9)].expand(2, 9, 32)
    _close(v["hook_embed"], tok)  # the token embedding alone (it used to be tok + pos)
    _close(v["hook_pos_embed"], pos)
    _close(v["blocks.0.hook_resid_pre"], tok + pos)
    attn = _gpt2_attn(_ln(tok + pos, blk.ln_1), blk.attn)
    _close(v["blocks.0.hook_attn_out"], attn)
    mid = tok + pos + attn
    _close(v["blocks.0.hook_resid_mid"], mid)
    h = _ln(mid, blk.ln_2)
    mlp = _gelu_new(h @ blk.mlp.c_fc.weight.double() + blk.mlp.c_fc.bias.double())
    mlp = mlp @ blk.mlp.c_proj.weight.double() + blk.mlp.c_proj.bias.double()
    _close(v["blocks.0.hook_mlp_out"], mlp)
    _close(v["blocks.0.hook_resid_post"], mid + mlp)
    x = v["blocks.1.hook_resid_post"]
    normed = (x - x.mean(-1, keepdim=True)) / torch.sqrt(
        x.var(-1, unbiased=False, keepdim=True) + tr.ln_f.eps
    )
    _close(v["ln_final.hook_normalized"], normed)  # before the gain and bias
    _close(v["final"], normed * tr.ln_f.weight.double() + tr.ln_f.bias.double())


def test_llama_rotary_by_hand():
    m = _build("llama")
    with pytest.raises(RepdispError, match="no position-embedding vector") as e:
        check_sites(m.config, parse_sites("hook_pos_embed", 2))
    assert "\n" not in str(e.value) and "hook_pos_embed (pos_embed)" in str(e.value)
    v = _read(m, ALL.replace("hook_pos_embed,", ""))
    body, blk = m.model, m.model.layers[0]
    tok = body.embed_tokens.weight.double()[IDS]
    _close(v["hook_embed"], tok)
    _close(v["blocks.0.hook_resid_pre"], tok)
    # attention: what is added to the residual (the identity is exact in float32)
    _close(v["blocks.0.hook_resid_mid"], tok + v["blocks.0.hook_attn_out"], 1e-6)
    mid = v["blocks.0.hook_resid_mid"]

    def rms(x, w, eps):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()

    h = rms(mid, blk.post_attention_layernorm.weight, blk.post_attention_layernorm.variance_epsilon)
    mm = blk.mlp
    gate, up = h @ mm.gate_proj.weight.double().T, h @ mm.up_proj.weight.double().T
    mlp = (torch.nn.functional.silu(gate) * up) @ mm.down_proj.weight.double().T
    _close(v["blocks.0.hook_mlp_out"], mlp)
    _close(v["blocks.0.hook_resid_post"], mid + mlp)
    x, eps = v["blocks.1.hook_resid_post"], body.norm.variance_epsilon
    normed = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    _close(v["ln_final.hook_normalized"], normed)
    _close(v["final"], normed * body.norm.weight.double())


@pytest.mark.parametrize("arch", ["gptj", "gpt_neox", "phi"])
def test_parallel_blocks_by_hand(arch):
    m = _build(arch)
    for bad, match in (
        ("hook_pos_embed", "no position-embedding"),
        ("blocks.0.hook_resid_mid", "parallel"),
    ):
        with pytest.raises(RepdispError, match=match):
            check_sites(m.config, parse_sites(bad, 2))
    specs = "hook_embed,blocks.0.hook_resid_pre,blocks.0.hook_attn_out,blocks.0.hook_mlp_out,"
    specs += "blocks.0.hook_resid_post,0.attn,ln_final.hook_normalized,1.ffn,final"
    v = _read(m, specs)
    blk = m.base_model.h[0] if arch == "gptj" else m.base_model.layers[0]
    x0 = v["blocks.0.hook_resid_pre"]
    _close(v["hook_embed"], m.get_input_embeddings().weight.double()[IDS])
    _close(v["hook_embed"], x0)
    ln = (
        blk.ln_1
        if arch == "gptj"
        else (blk.post_attention_layernorm if arch == "gpt_neox" else blk.input_layernorm)
    )
    h = _ln(x0, ln)  # the MLP reads the block input
    fc_in, fc_out = (
        (blk.mlp.fc_in, blk.mlp.fc_out)
        if arch == "gptj"
        else (
            (blk.mlp.dense_h_to_4h, blk.mlp.dense_4h_to_h)
            if arch == "gpt_neox"
            else (blk.mlp.fc1, blk.mlp.fc2)
        )
    )
    act = torch.nn.functional.gelu(h @ fc_in.weight.double().T + fc_in.bias.double())
    if arch != "gpt_neox":
        act = _gelu_new(h @ fc_in.weight.double().T + fc_in.bias.double())
    mlp = act @ fc_out.weight.double().T + fc_out.bias.double()
    _close(v["blocks.0.hook_mlp_out"], mlp)
    attn = v["blocks.0.hook_attn_out"]
    _close(v["0.attn"], x0 + attn, 1e-6)  # h_att = block input + attention branch
    _close(v["blocks.0.hook_resid_post"], x0 + attn + mlp)
    x = v["1.ffn"]
    norm = (
        m.base_model.ln_f
        if arch == "gptj"
        else (m.base_model.final_layer_norm if arch == "gpt_neox" else m.base_model.final_layernorm)
    )
    normed = (x - x.mean(-1, keepdim=True)) / torch.sqrt(
        x.var(-1, unbiased=False, keepdim=True) + norm.eps
    )
    _close(v["ln_final.hook_normalized"], normed)


def test_results_keep_the_name_asked(tiny_gpt2, tiny_segments):
    from repdisp.analyses.measure import measure
    from repdisp.core.extract import extract

    sites = parse_sites("blocks.1.hook_resid_post,hook_embed,final", 2)
    assert [(s.name, s.requested) for s in sites] == [
        ("tok_embed", "hook_embed"), ("1.ffn", "blocks.1.hook_resid_post"), ("final", ""),
    ]  # fmt: skip
    ex = extract(tiny_gpt2, tiny_segments, sites, "last", cache=False, progress=False)
    assert ex.requested == {"tok_embed": "hook_embed", "1.ffn": "blocks.1.hook_resid_post"}
    want = (
        tiny_gpt2.model.transformer.wte.weight.detach().double().numpy()[tiny_segments.ids[:, -1]]
    )
    np.testing.assert_allclose(ex.get("tok_embed"), want, rtol=1e-6)
    r = measure(tiny_gpt2, "python-docs", sites="blocks.1.hook_resid_post", segments=8, seq_len=16,
                cache=False, progress=False, bootstrap=10)  # fmt: skip
    assert (r.sites[0].site, r.sites[0].requested) == ("1.ffn", "blocks.1.hook_resid_post")


def test_unknown_architectures_are_refused_for_the_new_sites():
    class Cfg:
        model_type = "bloom"

    for spec in ("hook_embed", "hook_pos_embed", "blocks.0.hook_attn_out", "0.mlp_out"):
        with pytest.raises(RepdispError, match="cannot be located in a 'bloom' model"):
            check_sites(Cfg(), parse_sites(spec, 2))
