"""models and sites: site naming, model loading (and refusing bad or unsafe inputs), and the
bundled models' real perplexity on English prose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repdisp.core.corpus import make_segments
from repdisp.core.errors import RepdispError
from repdisp.core.extract import extract
from repdisp.core.models import BUNDLED, converted_dir, load_model
from repdisp.core.sites import Site, all_site_names, parse_site, parse_sites

N = 30  # blocks, as in SmolLM2-135M


# ---------------------------------------------------------------- sites


@pytest.mark.parametrize(
    ("spec", "depth", "name"),
    [
        ("embed", 0, "embed"),
        ("0.attn", 1, "0.attn"),
        ("0.ffn", 2, "0.ffn"),
        ("0", 2, "0.ffn"),
        ("3.block", 8, "3.ffn"),
        (" 29.attn ", 59, "29.attn"),
        ("-1.attn", 59, "29.attn"),
        ("-1", 60, "29.ffn"),
        ("-30.ffn", 2, "0.ffn"),
        ("final", 61, "final"),
    ],
)
def test_parse_site(spec, depth, name):
    assert parse_site(spec, N) == Site(depth, name)


@pytest.mark.parametrize("bad", ["30", "-31.attn", "foo", "1.mlp", "1.5", "", "attn"])
def test_unknown_site_lists_valid_names(bad):
    with pytest.raises(RepdispError) as e:
        parse_site(bad, N)
    msg = str(e.value)
    assert "unknown site" in msg
    for valid in ("embed", "0.attn", "0.ffn", "29.attn", "29.ffn", "final"):
        assert valid in msg


def test_parse_sites_lists_and_keywords():
    assert [s.name for s in parse_sites("all", 3)] == ["0.ffn", "1.ffn", "2.ffn"]
    assert [s.name for s in parse_sites("all.attn", 3)] == ["0.attn", "1.attn", "2.attn"]
    everything = [s.name for s in parse_sites("everything", 3)]
    assert everything == all_site_names(3) == [
        "embed", "0.attn", "0.ffn", "1.attn", "1.ffn", "2.attn", "2.ffn", "final",
    ]  # fmt: skip
    # comma lists and lists, duplicates and aliases collapse, sorted in forward order
    got = parse_sites(["final, -1", "0.attn", "2.ffn,2"], 3)
    assert [s.name for s in got] == ["0.attn", "2.ffn", "final"]
    assert [s.name for s in parse_sites("final,embed,all", 2)] == [
        "embed",
        "0.ffn",
        "1.ffn",
        "final",
    ]
    with pytest.raises(RepdispError, match="no site given"):
        parse_sites(" , ", 3)
    with pytest.raises(RepdispError, match="unknown site '7'"):
        parse_sites("0,7", 3)


# ---------------------------------------------------------------- load_model errors


def _state_folder(tiny_gpt2, tmp_path):
    """A transformers folder with config + tokenizer but no weights yet."""
    folder = tmp_path / "m"
    tiny_gpt2.model.config.save_pretrained(folder)
    tiny_gpt2.tokenizer.save_pretrained(folder)
    return folder


def test_load_folder_roundtrip(tiny_gpt2, tiny_gpt2_dir):
    lm = load_model(str(tiny_gpt2_dir), device="cpu", dtype="float32")
    assert lm.identity == load_model(str(tiny_gpt2_dir), "cpu", "float32").identity
    ids = torch.arange(10)[None]
    with torch.inference_mode():
        np.testing.assert_allclose(
            lm.model(ids).logits.numpy(), tiny_gpt2.model(ids).logits.numpy(), atol=1e-6
        )


def test_pickled_weights_refused_unless_allowed(tiny_gpt2, tmp_path):
    folder = _state_folder(tiny_gpt2, tmp_path)
    torch.save(tiny_gpt2.model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(RepdispError, match="pickle"):
        load_model(str(folder), device="cpu")
    lm = load_model(str(folder), device="cpu", dtype="float32", allow_pickle=True)
    w = lm.model.transformer.wte.weight
    torch.testing.assert_close(w, tiny_gpt2.model.transformer.wte.weight)


def test_folder_without_weights_or_config(tiny_gpt2, tmp_path):
    folder = _state_folder(tiny_gpt2, tmp_path)
    with pytest.raises(RepdispError, match="no model weights"):
        load_model(str(folder), device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RepdispError, match="no config.json"):
        load_model(str(empty), device="cpu")


@pytest.mark.parametrize("spec", ["no such model", "./missing/folder", "org/too/deep"])
def test_unknown_model_name(spec):
    # a bare name like ``smollm3-9b`` is a valid hub id (tests/test_loader_edges.py)
    with pytest.raises(RepdispError, match="unknown model") as e:
        load_model(spec, device="cpu")
    assert "smollm2-135m" in str(e.value)  # says what is bundled


def test_corrupt_gguf_and_other_files(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"NOPE" + bytes(1000))
    with pytest.raises(RepdispError, match="bad magic"):
        load_model(str(bad), device="cpu")
    other = tmp_path / "weights.txt"
    other.write_text("hello")
    with pytest.raises(RepdispError, match="not a .gguf"):
        load_model(str(other), device="cpu")


def test_bad_device_and_dtype():
    with pytest.raises(RepdispError, match="unknown dtype"):
        load_model("smollm2-135m", device="cpu", dtype="float8")
    with pytest.raises(RepdispError, match="unknown device"):
        load_model("smollm2-135m", device="tpu")


# ---------------------------------------------------------------- bundled models, real text


def _bundled_or_skip(name):
    if BUNDLED[name].gguf_path() is None and not (converted_dir(name) / "config.json").exists():
        pytest.skip(f"bundled {name} not installed ({BUNDLED[name].install})")


@pytest.mark.slow
def test_smollm2_perplexity_on_python_docs(smollm2):
    segs = make_segments(smollm2.tokenizer, "python-docs", 4, 128, seed=0)
    assert not segs.has_bos and segs.ids.shape == (4, 128)
    ex = extract(smollm2, segs, "final", "last", batch_size=4, cache=False, progress=False)
    assert np.all((ex.seq_ppl > 5) & (ex.seq_ppl < 50)), ex.seq_ppl
    assert ex.get("final").shape == (4, 576)


@pytest.mark.slow
def test_gemma3_perplexity_with_bos():
    _bundled_or_skip("gemma3-270m")
    lm = load_model("gemma3-270m", device="cpu", dtype="float32")
    segs = make_segments(lm.tokenizer, "python-docs", 3, 128, seed=0)
    bos = lm.tokenizer.bos_token_id
    assert segs.has_bos and segs.ids.shape == (3, 129)
    assert (segs.ids[:, 0] == bos).all() and (segs.ids[:, 1:] != bos).all()
    ex = extract(lm, segs, "final", "last", batch_size=3, cache=False, progress=False)
    assert np.all((ex.seq_ppl > 5) & (ex.seq_ppl < 50)), ex.seq_ppl


# ---------------------------------------------------------------- model facts and the final site


def test_loaded_model_facts(tiny_gpt2):
    cfg = tiny_gpt2.model.config
    assert tiny_gpt2.n_blocks == cfg.n_layer == len(tiny_gpt2.model.transformer.h)
    assert tiny_gpt2.d_model == cfg.n_embd
    assert tiny_gpt2.max_len == cfg.n_positions
    probe = tiny_gpt2.tokenizer("a").input_ids
    bos = tiny_gpt2.tokenizer.bos_token_id
    assert tiny_gpt2.bos_id == (bos if bos is not None and probe[:1] == [bos] else None)
    assert tiny_gpt2.parse_sites("-1,final") == parse_sites("-1,final", cfg.n_layer)


def test_final_site_is_the_body_output(tiny_gpt2):
    from repdisp.core.sites import SiteReader

    ids = torch.tensor([[5, 9, 2, 11, 3, 7]])
    sites = tiny_gpt2.parse_sites("0.ffn,final")
    with torch.inference_mode(), SiteReader(tiny_gpt2.model, sites, stop_early=True) as r:
        try:
            tiny_gpt2.model.base_model(input_ids=ids, use_cache=False)
        except Exception as e:  # StopForward after the deepest site (final) is expected
            assert type(e).__name__ == "StopForward"
    with torch.inference_mode():
        out = tiny_gpt2.model(input_ids=ids, output_hidden_states=True)
    # HF's last hidden state is the final norm's output; hidden_states[1] is block 0's output
    torch.testing.assert_close(r.values["final"], out.hidden_states[-1], rtol=0, atol=0)
    torch.testing.assert_close(r.values["0.ffn"], out.hidden_states[1], rtol=0, atol=0)
