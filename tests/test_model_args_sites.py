"""Site aliases (TransformerLens, HF hidden_states), `repdisp sites` from the config only,
--model-args (adapter, tokenizer, attn_implementation) and models the user already holds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from repdisp.cli import main
from repdisp.core.errors import RepdispError
from repdisp.core.extract import extract
from repdisp.core.models import as_loaded, load_model, model_config
from repdisp.core.sites import all_site_names, parse_sites, site_alias, site_names


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("blocks.5.hook_resid_mid", "5.attn"),
        ("blocks.5.hook_resid_post", "5.ffn"),
        ("blocks.0.hook_resid_pre", "embed"),
        ("blocks.6.hook_resid_pre", "5.ffn"),
        ("blocks.-1.hook_resid_post", "29.ffn"),
        ("hook_embed", "tok_embed"),
        ("hook_pos_embed", "pos_embed"),
        ("blocks.5.hook_attn_out", "5.attn_out"),
        ("blocks.-1.hook_mlp_out", "29.mlp_out"),
        ("ln_final.hook_normalized", "final_normalized"),
        ("hs:0", "embed"),
        ("hs:1", "0.ffn"),
        ("hs:29", "28.ffn"),
        ("hs:30", "final"),
        ("hs:-1", "final"),
        ("hs:-2", "28.ffn"),
        ("3.attn", "3.attn"),
    ],
)
def test_aliases_name_the_same_site(alias, name):
    assert site_alias(alias, 30) == name
    assert parse_sites(alias, 30) == parse_sites(name, 30)


def test_alias_out_of_range_is_an_error():
    with pytest.raises(RepdispError, match="hidden_states"):
        parse_sites("hs:31", 30)
    with pytest.raises(RepdispError, match="unknown site"):
        parse_sites("blocks.30.hook_resid_mid", 30)


def test_three_names_round_trip():
    for name in all_site_names(4):
        ours, tl, hs = site_names(name, 4)
        assert site_alias(tl, 4) == ours or (name == "final" and tl == "")
        if hs is not None:
            assert site_alias(f"hs:{hs}", 4) == ours
    assert site_names("3.ffn", 4)[2] is None  # HF's last entry is after the final norm


def test_hs_aliases_read_hf_hidden_states(tiny_gpt2, tiny_segments):
    n = tiny_gpt2.model.config.n_layer
    names = [f"hs:{k}" for k in range(n + 1)]
    ex = extract(tiny_gpt2, tiny_segments, names, "last", cache=False, progress=False)
    with torch.no_grad():
        out = tiny_gpt2.model(torch.as_tensor(tiny_segments.ids), output_hidden_states=True)
    for k in range(n + 1):
        want = out.hidden_states[k][:, -1].double().numpy()
        got = ex.get(site_alias(f"hs:{k}", n))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_sites_reads_the_config_only(tiny_gpt2_dir, tmp_path, capsys):
    only_config = tmp_path / "cfg"
    only_config.mkdir()
    shutil.copy(tiny_gpt2_dir / "config.json", only_config / "config.json")  # no weights
    assert model_config(str(only_config))["n_blocks"] == 2
    assert main(["sites", "--model", str(only_config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "2 blocks" in lines[0] and "d=32" in lines[0]
    rows = [ln.split()[:3] for ln in lines[2:]]
    assert rows[0][:2] == ["tok_embed", "hook_embed"]
    assert rows[2] == ["embed", "blocks.0.hook_resid_pre", "hs:0"]
    assert rows[3][:2] == ["0.attn_out", "blocks.0.hook_attn_out"]
    assert rows[4][:2] == ["0.attn", "blocks.0.hook_resid_mid"]
    assert rows[6] == ["0.ffn", "blocks.0.hook_resid_post", "hs:1"]
    assert rows[-1][:2] == ["final", "hs:2"]
    (only_config / "config.json").write_text(json.dumps({"model_type": "x"}))
    assert main(["sites", "--model", str(only_config)]) == 2


def test_user_model_in_memory_gives_the_same_result(tiny_gpt2, tiny_gpt2_dir):
    from repdisp.analyses.measure import measure

    kw = dict(sites=["final"], segments=4, seq_len=16, bootstrap=20, cache=False, progress=False)
    held = measure(model=(tiny_gpt2.model, tiny_gpt2.tokenizer), **kw).to_dict()
    loaded = measure(model=load_model(str(tiny_gpt2_dir), "cpu", "float32"), **kw).to_dict()
    assert held["sites"][0]["dispersion"] == pytest.approx(loaded["sites"][0]["dispersion"], 1e-9)
    assert held["ppl"] == pytest.approx(loaded["ppl"], rel=1e-9)
    a = as_loaded((tiny_gpt2.model, tiny_gpt2.tokenizer))
    assert (
        as_loaded(a) is a
        and a.identity == as_loaded((tiny_gpt2.model, tiny_gpt2.tokenizer)).identity
    )
    with pytest.raises(RepdispError):
        as_loaded((1, 2))


def test_identity_follows_the_weights(tiny_gpt2):
    import copy

    other = copy.deepcopy(tiny_gpt2.model)
    with torch.no_grad():
        other.transformer.h[0].mlp.c_fc.weight[3, 4] += 1e-3
    a = as_loaded((tiny_gpt2.model, tiny_gpt2.tokenizer)).identity
    b = as_loaded((other, tiny_gpt2.tokenizer)).identity
    assert a != b


def test_model_args_adapter_tokenizer_attn(tiny_gpt2_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model(str(tiny_gpt2_dir), "cpu", "float32")
    torch.manual_seed(1)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], init_lora_weights=False)
    peft_model = get_peft_model(load_model(str(tiny_gpt2_dir), "cpu", "float32").model, cfg)
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        want = peft_model(ids).logits
        base_logits = base.model(ids).logits
    lm = load_model(str(tiny_gpt2_dir), "cpu", "float32", adapter=str(tmp_path / "adapter"))
    with torch.no_grad():
        got = lm.model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, base_logits)  # the adapter changed something
    assert lm.identity != base.identity and "adapter=" in lm.identity

    tok = load_model(str(tiny_gpt2_dir), "cpu", "float32", tokenizer=str(tiny_gpt2_dir))
    assert "tokenizer=" in tok.identity
    eager = load_model(str(tiny_gpt2_dir), "cpu", "float32", attn_implementation="eager")
    assert eager.model.config._attn_implementation == "eager"
    assert "attn_implementation=eager" in eager.identity
    with pytest.raises(RepdispError, match="adapter_config.json"):
        load_model(str(tiny_gpt2_dir), "cpu", "float32", adapter=str(tmp_path))


def test_cli_model_args_reach_the_loader(tiny_gpt2_dir, tmp_path, capsys):
    base = ["measure", "--model", str(tiny_gpt2_dir), "--segments", "3", "--seq-len", "12"]
    base += ["--no-cache", "--quiet", "--bootstrap", "10", "--out", str(tmp_path / "r")]
    assert main([*base, "--model-args", "attn_implementation=eager,dtype=float32"]) == 0
    assert main([*base, "--overwrite", "--model-args", f"adapter={tmp_path}"]) == 2
    assert "adapter_config.json" in capsys.readouterr().err
    assert main([*base]) == 2  # measure.json is there from the first run
    assert "--overwrite" in capsys.readouterr().err
