"""Loader edges: options given twice, hub ids, an unreachable hub, texts in memory.

- an option given twice must agree (``--model-args dtype=`` vs ``--dtype``), else one line
  naming both; ``revision=`` applies to hub ids only;
- anything huggingface_hub accepts as a repo id is a hub id (``gpt2`` too);
- an unreachable hub fails in seconds with a line naming ``HF_HUB_OFFLINE=1`` and a local
  folder (tested for real: an endpoint under ``.invalid`` never resolves, port 9 of the
  loopback refuses);
- ``measure(data=...)`` takes a list, a pandas Series or any ordered sequence of ``str``, with
  the same numbers as the same texts read from a file, and every argument is judged before the
  model loads.
"""

from __future__ import annotations

import json
import time

import pytest

from repdisp.cli import main
from repdisp.core import hub
from repdisp.core.errors import RepdispError
from repdisp.core.models import load_model, model_config
from repdisp.core.precision import agree_dtype
from repdisp.core.texts import load_texts


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.rstrip("\n")


# ---------------------------------------------------------------- options given twice


def test_dtype_given_twice(tiny_gpt2_dir, capsys):
    assert agree_dtype("auto", None) == "auto"
    assert agree_dtype("auto", "bfloat16") == "bfloat16"
    assert agree_dtype("float32", None) == "float32"
    assert agree_dtype("float16", "float16") == "float16"
    base = ["measure", "--model", str(tiny_gpt2_dir), "--segments", "2", "--seq-len", "8"]
    assert main([*base, "--model-args", "dtype=bfloat16", "--dtype", "float32"]) == 2
    assert _one_line(capsys) == (
        "repdisp: error: --model-args dtype=bfloat16 and --dtype float32 disagree: give one of them"
    )
    with pytest.raises(SystemExit) as e:  # refused while parsing
        main([*base, "--model-args", "dtype=float32,dtype=float16"])
    assert e.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith(
            "error: argument --model-args: --model-args dtype=float32 and dtype=float16 disagree: "
            "give one"
        )
    )


def test_revision_applies_to_hub_ids_only(tiny_gpt2_dir, tmp_path, capsys):
    args = ["measure", "--model", str(tiny_gpt2_dir), "--model-args", "revision=main"]
    assert main(args) == 2
    assert _one_line(capsys) == (
        f"repdisp: error: --model-args revision=main applies only to hub ids; {tiny_gpt2_dir} "
        "is a folder"
    )
    with pytest.raises(RepdispError, match="^--model-args revision=v2 .* is a bundled model$"):
        load_model("smollm2-135m", device="cpu", revision="v2")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(RepdispError, match="is a local .gguf file$"):
        load_model(str(gguf), revision="main")


def test_device_map_and_device_disagree(tiny_gpt2_dir):
    with pytest.raises(RepdispError, match="^--model-args device_map=auto and --device cpu"):
        load_model(str(tiny_gpt2_dir), device="cpu", device_map="auto")


# ---------------------------------------------------------------- hub ids and an unreachable hub


@pytest.mark.parametrize(
    "spec,ok",
    [
        ("gpt2", True),
        ("openai-community/gpt2", True),
        ("HuggingFaceTB/SmolLM2-135M", True),
        ("a.b_c-d", True),
        ("a/b/c", False),
        ("./gpt2", False),
        ("/abs/path", False),
        ("~/model", False),
        ("org--name", False),
        ("org/na..me", False),
        ("name.git", False),
        ("-name", False),
        ("na me", False),
        ("x" * 97, False),
        ("", False),
    ],
)
def test_hub_id_rule(spec, ok):
    assert hub.is_hub_id(spec) is ok


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """A hub endpoint that cannot resolve, an empty hub cache, and no offline switch."""
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.repdisp.invalid")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    import os

    for k in list(os.environ):
        if k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") or k.lower().endswith("_proxy"):
            monkeypatch.delenv(k)
    return tmp_path / "hf-cache"


UNREACHABLE = (
    "repdisp: error: the Hugging Face hub is unreachable (hub.repdisp.invalid:443: {why}), so "
    "'gpt2' cannot be downloaded; set HF_HUB_OFFLINE=1 to use models already in the local hub "
    "cache, or pass a local model folder or .gguf file (bundled: smollm2-135m, gemma3-270m)"
)


def test_unreachable_hub_fails_fast_and_says_what_to_do(no_hub, capsys):
    """``--model gpt2`` (no organisation) is taken as a hub id, and the hub being unreachable
    is said in seconds (transformers' own retries take close to a minute)."""
    start = time.perf_counter()
    code = main(["measure", "--model", "gpt2", "--segments", "2", "--seq-len", "8"])
    elapsed = time.perf_counter() - start
    line = _one_line(capsys)
    assert code == 2 and elapsed < 10, (code, elapsed, line)
    assert line.startswith("repdisp: error: the Hugging Face hub is unreachable (hub.repdisp.")
    why = line.split("443: ", 1)[1].split(")", 1)[0]
    assert line == UNREACHABLE.format(why=why)
    assert "unknown model" not in line
    # the same for `repdisp sites`, which reads only the config
    start = time.perf_counter()
    with pytest.raises(RepdispError, match="hub is unreachable .* HF_HUB_OFFLINE=1"):
        model_config("gpt2")
    assert time.perf_counter() - start < 10


def test_refused_connection_is_unreachable_too(no_hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nobody listens
    start = time.perf_counter()
    with pytest.raises(RepdispError) as e:
        load_model("openai-community/gpt2", device="cpu")
    assert time.perf_counter() - start < 10
    assert str(e.value).startswith(
        "the Hugging Face hub is unreachable (127.0.0.1:9: Connection refused), so "
        "'openai-community/gpt2' cannot be downloaded; set HF_HUB_OFFLINE=1"
    )


def test_the_probe_goes_through_a_proxy(no_hub, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert hub.endpoint() == ("proxy.example", 3128)
    monkeypatch.setenv("NO_PROXY", "hub.repdisp.invalid")
    assert hub.endpoint() == ("hub.repdisp.invalid", 443)


def test_offline_and_cached(no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RepdispError) as e:
        load_model("gpt2", device="cpu")
    assert str(e.value) == (
        "'gpt2' is not in the local hub cache and HF_HUB_OFFLINE is set: unset it to download "
        "the model, or pass a local model folder or .gguf file"
    )
    # a repo in the cache (huggingface_hub's layout) is used from it, online or not
    snap = no_hub / "models--org--name" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (no_hub / "models--org--name" / "refs").mkdir()
    (no_hub / "models--org--name" / "refs" / "main").write_text("abc123\n")
    assert hub.cached("org/name") and hub.cached("org/name", "abc123")
    assert not hub.cached("org/name", "v2") and not hub.cached("org/other")
    assert hub.hub_access("org/name") == {}
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert hub.hub_access("org/name") == {"local_files_only": True}  # hub down, cache used


# ---------------------------------------------------------------- texts in memory


class _Column:
    """Duck-typed like a ``datasets`` column: ordered, with len, not a list."""

    def __init__(self, values):
        self._values = list(values)

    def __len__(self):
        return len(self._values)

    def __iter__(self):
        return iter(self._values)


def test_measure_takes_texts_in_memory(tiny_gpt2, tmp_path):
    import pandas as pd

    from repdisp import measure

    docs = load_texts("python-docs")[:30]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    opts = dict(segments=4, seq_len=16, bootstrap=2, cache=False, progress=False, sites="0,final")
    ref = measure(tiny_gpt2, str(path), **opts)
    for data in (docs, tuple(docs), pd.Series(docs), _Column(docs), [*docs, "  ", ""]):
        r = measure(tiny_gpt2, data=data, **opts)
        assert [s.dispersion for s in r.sites] == [s.dispersion for s in ref.sites]
        assert r.ppl == ref.ppl and r.n_segments == 4
        assert r.data == f"{len(data)} texts in memory"


@pytest.mark.parametrize(
    "kwargs,line",
    [
        ({"data": [1, "a"]}, "data[0] is a number (int), not a string"),
        ({"data": ["a", None]}, "data[1] is null, not a string"),
        ({"data": []}, "data (0 texts in memory) holds no text"),
        ({"data": ["", " \n"]}, "data (2 texts in memory) holds no text"),
        (
            {"data": 42},
            "data: expected a source (a file, a folder, a built-in or hf:NAME) or a "
            "sequence of strings (list, pandas Series, datasets column), got int",
        ),
        ({"data": {"text": "a"}}, "got dict"),
        ({"data": b"bytes"}, "got bytes"),
        ({"data": "no/such/file.txt"}, "data 'no/such/file.txt' not found"),
        (
            {"model": 3.5},
            "model: expected a name/path, a LoadedModel or (hf_model, tokenizer), got float",
        ),
        ({"segments": 1}, "--segments must be an integer of at least 2, got 1"),
        ({"seq_len": "8"}, "--seq-len must be an integer of at least 2, got '8'"),
        ({"batch_size": 0}, "--batch-size must be an integer of at least 1, got 0"),
        ({"pooling": "max"}, "unknown pooling 'max'; choose last, mean or within"),
        ({"dtype": "float8"}, "unknown dtype 'float8'"),
        ({"sites": 3}, "sites: expected a string or a list of strings, got 3"),
    ],
)
def test_measure_checks_every_argument_before_loading(monkeypatch, kwargs, line):
    import pandas as pd

    import repdisp.analyses.measure as measure_mod

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(measure_mod, "load_model", no_load)
    args = {"model": "smollm2-135m", "data": ["some text"], "device": "cpu", **kwargs}
    with pytest.raises(RepdispError) as e:
        measure_mod.measure(**args)
    assert line in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(RepdispError, match=r"^data\[1\] is a number \(float\), not a string$"):
        measure_mod.measure("smollm2-135m", pd.Series(["a", float("nan")]), device="cpu")


def test_hf_dataset_with_the_hub_unreachable_fails_fast(monkeypatch):
    """``hf:`` sources probe the hub first: one line naming HF_DATASETS_OFFLINE, well under the
    ~25 s of retries ``datasets`` makes on its own."""
    from repdisp.core.texts import _hf_dataset

    pytest.importorskip("datasets")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a refused connection
    t = time.perf_counter()
    with pytest.raises(RepdispError) as e:
        _hf_dataset("hf:some/dataset", "text", "test", False)
    assert time.perf_counter() - t < hub.PROBE_SECONDS + 5
    assert "unreachable" in str(e.value) and "HF_DATASETS_OFFLINE=1" in str(e.value)
