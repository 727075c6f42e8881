"""Strict loading: a checkpoint that does not fill the model exactly (missing, unexpected or
reshaped tensors, integers where floats are expected) is a one-line error naming the tensors,
never a partly random model; sites that cannot be located in an architecture are refused."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from repdisp.cli import main
from repdisp.core.errors import RepdispError
from repdisp.core.models import load_model


def _tiny_llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=128,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


@pytest.fixture(params=["gpt2", "llama"])
def model_dir(request, tiny_gpt2_dir, tiny_tokenizer, tmp_path):
    folder = tmp_path / request.param
    if request.param == "gpt2":
        shutil.copytree(tiny_gpt2_dir, folder)
    else:
        _tiny_llama(tiny_tokenizer).save_pretrained(folder, safe_serialization=True)
        tiny_tokenizer.save_pretrained(folder)
    return folder


def _rewrite(folder, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _a_weight(tensors) -> str:
    return sorted(k for k in tensors if k.endswith("weight") and ".1." in k)[0]


def test_clean_checkpoint_loads(model_dir):
    lm = load_model(str(model_dir), device="cpu", dtype="float32")
    assert sum(p.numel() for p in lm.model.parameters()) > 0


def test_missing_tensor_is_named(model_dir):
    name = _a_weight(load_file(model_dir / "model.safetensors"))
    _rewrite(model_dir, lambda t: t.pop(name))
    with pytest.raises(RepdispError, match="missing tensors") as e:
        load_model(str(model_dir), device="cpu", dtype="float32")
    assert name in str(e.value) and "\n" not in str(e.value)


def test_unexpected_tensor_is_named(model_dir):
    _rewrite(model_dir, lambda t: t.update({"surprise.weight": torch.zeros(3)}))
    with pytest.raises(RepdispError, match=r"unexpected tensors surprise\.weight"):
        load_model(str(model_dir), device="cpu", dtype="float32")


def test_wrong_shape_is_named(model_dir):
    name = _a_weight(load_file(model_dir / "model.safetensors"))
    _rewrite(model_dir, lambda t: t.update({name: t[name][..., :3].contiguous()}))
    with pytest.raises(RepdispError, match="wrong shape") as e:
        load_model(str(model_dir), device="cpu", dtype="float32")
    assert name in str(e.value)


def test_int8_tensor_where_float_expected(model_dir):
    name = _a_weight(load_file(model_dir / "model.safetensors"))
    _rewrite(model_dir, lambda t: t.update({name: (t[name] * 100).to(torch.int8)}))
    with pytest.raises(RepdispError, match=r"integer tensors .*\(I8\)") as e:
        load_model(str(model_dir), device="cpu", dtype="float32")
    assert name in str(e.value)


def test_cli_one_line_no_load_report(model_dir, capsys):
    name = _a_weight(load_file(model_dir / "model.safetensors"))
    _rewrite(model_dir, lambda t: t.pop(name))
    args = ["measure", "--model", str(model_dir), "--segments", "2", "--seq-len", "8"]
    assert main(args + ["--no-cache", "--quiet"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "Loading weights" not in ln]
    err = [ln for ln in err if ln.strip()]
    assert len(err) == 1 and err[0].startswith("repdisp: error: checkpoint"), err
    assert name in err[0] and "MISSING" not in err[0]
