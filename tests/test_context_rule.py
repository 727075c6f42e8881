"""One context-length rule for every window fed to a model, and ``hf:`` options passed explicitly.

The rule (``core.loaded.check_window``): ``tokens`` plus the BOS (when the tokenizer adds one)
must be at most ``LoadedModel.max_len``. ``make_segments`` (``--seq-len``), the CLI's
``check_context`` (``--context``, ``--chunk-len``) and the kNN-LM windows all refuse exactly
the same lengths with the same line. The split of an ``hf:`` source travels as an argument from
``--split`` to ``datasets.load_dataset``; no module global carries it.
"""

from __future__ import annotations

import sys
import types

import pytest

from repdisp.core import corpus, texts
from repdisp.core.errors import RepdispError
from repdisp.core.loaded import check_window
from repdisp.core.segments import make_segments


@pytest.mark.parametrize(
    "tokens,max_len,bos,error",
    [
        (256, 256, None, None),  # no BOS: a window may fill the context
        (257, 256, None, "--seq-len 257 exceeds the model's context of 256 tokens"),
        (255, 256, 7, None),  # 255 + BOS = 256
        (256, 256, 0, "--seq-len 256 plus the BOS exceeds the model's context of 256 tokens"),
        (10**6, None, 0, None),  # a config without a length: no limit
    ],
)
def test_check_window_boundaries(tokens, max_len, bos, error):
    if error is None:
        check_window(tokens, max_len, bos)
    else:
        with pytest.raises(RepdispError) as e:
            check_window(tokens, max_len, bos)
        assert str(e.value) == error


class _BosTokenizer:
    """``tiny_tokenizer`` that adds ``bos`` in front by default (as Llama's and Gemma's do)."""

    def __init__(self, inner):
        self.inner, self.bos_token_id, self.eos_token_id = inner, inner.eos_token_id, None

    @property
    def backend_tokenizer(self):
        return self.inner.backend_tokenizer

    def __call__(self, text, add_special_tokens=True, **kw):
        out = self.inner(text, add_special_tokens=False, **kw)
        if add_special_tokens and isinstance(text, str):
            out["input_ids"] = [self.bos_token_id, *out["input_ids"]]
        return out


def test_every_window_check_uses_the_one_rule(tiny_gpt2, tiny_tokenizer):
    from repdisp.applications.knnlm.windows import check_context as knn_check
    from repdisp.commands.options import check_context as cli_check

    assert tiny_gpt2.max_len == 256 and tiny_gpt2.bos_id is None
    # without a BOS the whole context is usable (the old make_segments rule refused 256)
    segs = make_segments(tiny_tokenizer, "python-docs", 2, 256, max_len=256, cache=False)
    assert segs.ids.shape == (2, 256) and not segs.has_bos
    tiny_gpt2.check_window(256)
    cli_check(tiny_gpt2, "--chunk-len", 256)
    knn_check(256, tiny_gpt2.max_len, tiny_gpt2.bos_id)
    lines = []
    for refuse in (
        lambda: make_segments(tiny_tokenizer, "python-docs", 2, 257, max_len=256, cache=False),
        lambda: tiny_gpt2.check_window(257, "--seq-len"),
        lambda: cli_check(tiny_gpt2, "--seq-len", 257),
    ):
        with pytest.raises(RepdispError) as e:
            refuse()
        lines.append(str(e.value))
    assert lines == ["--seq-len 257 exceeds the model's context of 256 tokens"] * 3
    # with a BOS the window needs one position more, in make_segments as in the kNN-LM check
    bos_tok = _BosTokenizer(tiny_tokenizer)
    segs = make_segments(bos_tok, "python-docs", 2, 255, max_len=256, cache=False)
    assert segs.ids.shape == (2, 256) and (segs.ids[:, 0] == bos_tok.bos_token_id).all()
    with pytest.raises(RepdispError, match="^--seq-len 256 plus the BOS exceeds .* 256 tokens$"):
        make_segments(bos_tok, "python-docs", 2, 256, max_len=256, cache=False)
    with pytest.raises(RepdispError, match="^--context 256 plus the BOS exceeds .* 256 tokens$"):
        knn_check(256, 256, bos_tok.bos_token_id)


@pytest.fixture
def fake_datasets(monkeypatch):
    """A stand-in ``datasets`` module recording the split of every ``load_dataset`` call."""
    calls: list[tuple] = []
    docs = texts.load_texts("python-docs")[:40]

    class _Dataset:
        column_names = ["text"]

        def __getitem__(self, field):
            return docs

    def load_dataset(name, config=None, split=None, **kwargs):
        calls.append((name, config, split, kwargs))
        return _Dataset()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # no hub probe before the stand-in
    texts._MEMO.clear()
    yield calls
    texts._MEMO.clear()


def test_split_is_an_argument_not_a_global(fake_datasets):
    assert not hasattr(corpus, "HF_DEFAULTS") and not hasattr(texts, "HF_DEFAULTS")
    assert texts.load_texts("hf:toy:cfg", split="validation")[0].strip()
    texts.load_texts("hf:toy")
    texts.load_texts("hf:toy", trust_remote_code=True)
    assert fake_datasets == [
        ("toy", "cfg", "validation", {}),
        ("toy", None, "test", {}),
        ("toy", None, "test", {"trust_remote_code": True}),
    ]


def test_cli_split_reaches_the_dataset(fake_datasets, tiny_gpt2_dir, tmp_path):
    """``--split`` is read by the pre-flight check and by the run itself: one read of the
    validation split (a run that lost the split would read ``test`` a second time)."""
    from repdisp.cli import main

    args = ["measure", "--model", str(tiny_gpt2_dir), "--data", "hf:toy", "--split", "validation"]
    args += ["--segments", "2", "--seq-len", "8", "--bootstrap", "1", "--no-cache", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert [c[2] for c in fake_datasets] == ["validation"]
