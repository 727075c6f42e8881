"""``I.attn`` is the residual stream after block I's attention in every supported wiring
(sequential pre-norm, Gemma's sandwich norms, parallel blocks, OLMo-2 post-norms), checked
against an independent identity: the block output equals h_att plus the block's MLP branch
recomputed by hand from h_att (or from the block input, for parallel blocks). Architectures whose
wiring is unknown are refused for ``I.attn``, never read at a tensor that merely looks right."""

from __future__ import annotations

import pytest
import torch

from repdisp.core.errors import RepdispError
from repdisp.core.sites import SiteReader, attn_rule, check_sites, parse_sites

SMALL = dict(vocab_size=64, hidden_size=32, num_attention_heads=2, max_position_embeddings=64)


def _llama_like(name: str, **extra):
    import transformers

    cfg = getattr(transformers, f"{name}Config")(
        num_hidden_layers=2, intermediate_size=48, num_key_value_heads=2, **SMALL, **extra
    )
    return getattr(transformers, f"{name}ForCausalLM")(cfg)


def _build(arch: str):
    import transformers as T

    torch.manual_seed(0)
    if arch == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    if arch in ("llama", "qwen2", "mistral", "olmo2"):
        name = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral", "olmo2": "Olmo2"}[arch]
        return _llama_like(name)
    if arch == "gemma2":
        return _llama_like("Gemma2", head_dim=16)
    if arch == "gemma3_text":
        cfg = T.Gemma3TextConfig(
            num_hidden_layers=2, intermediate_size=48, num_key_value_heads=2, head_dim=16, **SMALL
        )
        return T.Gemma3ForCausalLM(cfg)
    if arch.startswith("gpt_neox"):
        cfg = T.GPTNeoXConfig(
            num_hidden_layers=2, intermediate_size=48, use_parallel_residual=arch == "gpt_neox",
            **SMALL,
        )  # fmt: skip
        return T.GPTNeoXForCausalLM(cfg)
    if arch == "phi":
        return T.PhiForCausalLM(T.PhiConfig(num_hidden_layers=2, intermediate_size=48, **SMALL))
    raise AssertionError(arch)


def _mlp_branch(arch: str, block, h_att, h_in):
    """What the block adds after attention, recomputed from the block's own modules."""
    if arch == "gpt2":
        return block.mlp(block.ln_2(h_att))
    if arch in ("llama", "qwen2", "mistral", "gpt_neox_seq"):
        return block.mlp(block.post_attention_layernorm(h_att))
    if arch in ("gemma2", "gemma3_text"):
        return block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(h_att)))
    if arch == "olmo2":
        return block.post_feedforward_layernorm(block.mlp(h_att))
    if arch == "gpt_neox":  # parallel: the MLP reads the block input
        return block.mlp(block.post_attention_layernorm(h_in))
    if arch == "phi":
        return block.mlp(block.input_layernorm(h_in))
    raise AssertionError(arch)


ARCHS = ["gpt2", "llama", "qwen2", "mistral", "gemma2", "gemma3_text", "olmo2", "gpt_neox"]
ARCHS += ["gpt_neox_seq", "phi"]


@pytest.mark.parametrize("arch", ARCHS)
def test_attn_site_is_the_residual_after_attention(arch):
    model = _build(arch).eval()
    assert attn_rule(model.config) is not None
    sites = parse_sites("embed,0.attn,0.ffn,1.attn,1.ffn", 2)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(), SiteReader(model, sites, stop_early=False) as r:
        model(ids)
    blocks = model.base_model.layers if hasattr(model.base_model, "layers") else model.base_model.h
    v = r.values
    with torch.inference_mode():
        for i, h_in in ((0, v["embed"]), (1, v["0.ffn"])):
            h_att, h_ffn = v[f"{i}.attn"], v[f"{i}.ffn"]
            assert not torch.allclose(h_att, h_in) and not torch.allclose(h_att, h_ffn)
            expected = h_att + _mlp_branch(arch, blocks[i], h_att, h_in)
            torch.testing.assert_close(h_ffn, expected, rtol=1e-5, atol=1e-5)


def test_unknown_architecture_refused_for_attn_only():
    model = _build("llama").eval()
    model.config.model_type = "mystery"  # a decoder whose block wiring repdisp does not know
    ids = torch.arange(8)[None]
    with pytest.raises(RepdispError, match=r"site 0\.attn cannot be located.*'mystery'") as e:
        with SiteReader(model, parse_sites("0.attn,1.ffn", 2), stop_early=False):
            model(ids)
    assert "sites that work: embed, I.ffn" in str(e.value) and "\n" not in str(e.value)
    with torch.inference_mode(), SiteReader(model, parse_sites("embed,1.ffn", 2), False) as r:
        model(ids)
    assert set(r.values) == {"embed", "1.ffn"}


def test_check_sites_from_config_alone():
    from transformers import Olmo2Config

    check_sites(Olmo2Config(), parse_sites("0.attn", 2))

    class Stub:
        model_type = "lfm2"

    check_sites(Stub(), parse_sites("embed,0.ffn,final", 2))
    with pytest.raises(RepdispError, match="'lfm2'"):
        check_sites(Stub(), parse_sites("all.attn", 2))
