"""The gap (§3.2) of a checkpoint behind an fsspec URL: only the safetensors header and the
byte ranges of the needed output-embedding rows are read, and G equals the local full-file G."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import repdisp
from repdisp.applications.gap import EmbeddingRows, gap_components
from repdisp.applications.gap import rank_by_gap as gap

READ: dict[str, int] = {}


def _counting_fs():
    """A local filesystem under the protocol ``countfs`` that counts every byte read per file."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    class Counted:
        def __init__(self, f, path):
            self._f, self._path = f, path

        def read(self, n=-1):
            data = self._f.read(n)
            READ[self._path] = READ.get(self._path, 0) + len(data)
            return data

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    class CountingFS(LocalFileSystem):
        protocol = "countfs"

        def _open(self, path, mode="rb", **kw):
            return Counted(super()._open(path, mode, **kw), self._strip_protocol(path))

        def cat_file(self, path, start=None, end=None, **kw):  # through _open, so counted
            with self._open(path, "rb") as f:
                f.seek(start or 0)
                return f.read(-1 if end is None else end - (start or 0))

    fsspec.register_implementation("countfs", CountingFS, clobber=True)


def _checkpoint(tmp_path, tokenizer, *, tied=False, dtype=None, shard=None):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tokenizer),
                     tie_word_embeddings=tied)  # fmt: skip
    model = GPT2LMHeadModel(cfg)
    if dtype is not None:
        model = model.to(dtype)
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder, max_shard_size=shard) if shard else model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model.get_output_embeddings().weight.detach().double().numpy()


def _word_files(tmp_path, tokenizer):
    """Two lists of words that are single tokens of the tiny tokenizer (trained on pydoc)."""
    words = sorted(t[1:] for t in tokenizer.get_vocab() if t.startswith("\u0120") and
                   t[1:].isalpha() and len(t) > 3)  # fmt: skip
    assert len(words) >= 30
    (tmp_path / "dom.txt").write_text("\n".join(words[:15]))
    (tmp_path / "ref.txt").write_text("\n".join(words[15:30]))
    return str(tmp_path / "dom.txt"), str(tmp_path / "ref.txt")


def _header_len(path):
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.parametrize("tied", [False, True])
def test_gap_through_url_reads_header_and_rows_only(tiny_gpt2, tmp_path, monkeypatch, tied):
    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    _counting_fs()
    folder, full = _checkpoint(tmp_path, tiny_gpt2.tokenizer, tied=tied)
    (weights,) = folder.glob("*.safetensors")
    dom, ref = _word_files(tmp_path, tiny_gpt2.tokenizer)
    READ.clear()
    res = gap([f"countfs://{folder}"], dom, reference=ref)
    local = gap([str(folder)], dom, reference=ref)  # safe_open on the local file
    got, want = res.checkpoints[0], local.checkpoints[0]
    assert (got.tensor, got.tied) == (want.tensor, want.tied) and got.tied == tied
    assert got.matrix_shape == want.matrix_shape == full.shape
    # the full-file value: the same token ids on the whole matrix, brute force
    src = EmbeddingRows(str(folder))
    assert got.n_domain >= 2 and got.n_reference >= 2
    for metric in ("cosine", "euclidean"):
        assert getattr(got, metric) == getattr(want, metric)
    from repdisp.applications.gap.analysis import _token_sets

    t, r = _token_sets(src, *_words(dom, ref), {})
    g = gap_components(full[t.ids], full[r.ids], "cosine")
    assert got.cosine.gap == pytest.approx(g.gap, rel=1e-12)
    # bytes read from the weights: the header, then exactly the distinct rows needed
    rows = len(np.unique(np.concatenate([t.ids, r.ids])))
    assert READ[str(weights)] == _header_len(weights) + rows * full.shape[1] * 4
    assert READ[str(weights)] < weights.stat().st_size / 4


def _words(dom, ref):
    from repdisp.applications.gap import DOMAINS, REFERENCES, load_words

    return load_words(dom, DOMAINS), load_words(ref, REFERENCES)


def test_file_url_bf16_and_sharded_index(tiny_gpt2, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    _counting_fs()
    folder, full = _checkpoint(tmp_path, tiny_gpt2.tokenizer, dtype=torch.bfloat16, shard="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    ids = np.array([5, 6, 7, 400, 6, 0])
    src = EmbeddingRows(f"file://{folder}")
    assert src.tensor == "lm_head.weight" and not src.tied
    np.testing.assert_array_equal(src.rows(ids), full[ids])  # bf16 widened exactly
    READ.clear()
    EmbeddingRows(f"countfs://{folder}").rows(ids)
    shard = str(folder / index["lm_head.weight"])
    assert index["lm_head.weight"] != index["transformer.wte.weight"]  # two shards
    assert set(READ) == {str(folder / "model.safetensors.index.json"), shard}  # one shard read
    # header + rows {0}, {5, 6, 7}, {400}: 5 distinct rows of 16 bf16 values
    assert READ[shard] == _header_len(folder / index["lm_head.weight"]) + 5 * full.shape[1] * 2


def test_bad_urls_are_one_line_errors(tmp_path):
    with pytest.raises(repdisp.RepdispError, match="no .safetensors"):
        EmbeddingRows(f"file://{tmp_path}")
    with pytest.raises(repdisp.RepdispError, match="cannot open this URL"):
        EmbeddingRows("nosuchproto://x/y")
    bad = tmp_path / "m.safetensors"
    bad.write_bytes(b"\xff" * 16)
    with pytest.raises(repdisp.RepdispError, match="not a readable safetensors"):
        EmbeddingRows(f"file://{bad}")
