"""Result files: one writer (atomic, strict JSON, provenance, a separate ``run`` block), the result
protocol (tables / to_frame / figure / to_dict) and ``load_result`` reading every kind back."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pytest

import repdisp
from repdisp.cli import main
from repdisp.io.results import Result, load_result, strict_json, write_result


def _no_run(path):
    doc = json.loads(path.read_text())
    doc.pop("run")
    return doc


@pytest.fixture
def tiny_measure(tiny_gpt2_dir):
    base = ["measure", "--model", str(tiny_gpt2_dir), "--segments", "6", "--seq-len", "16"]
    return base + ["--no-cache", "--quiet", "--bootstrap", "50", "--site", "final,0.attn"]


def test_identical_runs_equal_except_run_block(tiny_measure, tmp_path):
    out = tmp_path / "m"
    assert main(tiny_measure + ["--out", str(out)]) == 0
    first = (out / "measure.json").read_bytes()
    seg1 = (out / "measure_segments.parquet").read_bytes()
    assert main(tiny_measure + ["--out", str(out)]) == 0
    second = (out / "measure.json").read_bytes()
    assert first != second  # the run block (date, seconds) differs ...
    a, b = json.loads(first), json.loads(second)
    assert a.pop("run").keys() == b.pop("run").keys() == {"date", "host", "seconds"}
    # ... and nothing else: byte-for-byte once `run` is removed
    assert json.dumps(a, indent=2) == json.dumps(b, indent=2)
    assert (out / "measure_segments.parquet").read_bytes() == seg1
    prov = a["provenance"]
    assert prov["command"].startswith("repdisp measure --model ") and "--out" in prov["command"]
    assert prov["seed"] == 0 and prov["python"] and prov["torch"] and prov["transformers"]
    assert prov["repdisp"] == repdisp.__version__
    (model,) = prov["models"]
    assert model["identity"] and model["dtype"] == "float32" and model["device"] == "cpu"
    (data,) = prov["data"]
    assert data["source"] == "python-docs" and data["shape"] == [6, 16]
    assert len(data["fingerprint"]) == 16
    assert prov["device"] == "cpu" and prov["dtype"] == "float32"
    # no temp files left behind by the atomic writes
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_measure_headline_perplexities_by_hand(tiny_gpt2):
    """exp(mean NLL) and medians, against a hand computation from the per-segment NLLs."""
    r = repdisp.measure(
        tiny_gpt2, segments=5, seq_len=12, bootstrap=20, cache=False, progress=False,
        per_segment=True,
    )  # fmt: skip
    rows = r.segments()
    nll = [row["mean_nll"] for row in rows]
    last = [row["last_token_nll"] for row in rows]
    assert r.ppl == pytest.approx(math.exp(sum(nll) / 5), rel=1e-12)
    assert r.median_ppl == pytest.approx(sorted(math.exp(v) for v in nll)[2], rel=1e-12)
    assert r.last_token_ppl == pytest.approx(math.exp(sum(last) / 5), rel=1e-12)
    assert r.median_last_token_ppl == pytest.approx(sorted(math.exp(v) for v in last)[2])
    # the arithmetic mean of exp(NLL) is what the headline must not be
    mean_exp = sum(math.exp(v) for v in last) / 5
    assert mean_exp > r.last_token_ppl  # Jensen: strictly, as the NLLs differ
    # the token NLLs themselves, recomputed with the model directly
    import torch

    from repdisp.core.corpus import make_segments

    segs = make_segments(tiny_gpt2.tokenizer, "python-docs", 5, 12, seed=0)
    with torch.no_grad():
        logits = tiny_gpt2.model(torch.as_tensor(segs.ids)).logits.double()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, torch.as_tensor(segs.ids)[:, 1:, None])
    tok_nll = -lp[..., 0].numpy()
    assert np.allclose(nll, tok_nll.mean(axis=1), rtol=1e-5)
    assert np.allclose(last, tok_nll[:, -1], rtol=1e-5)
    assert [row["token_offset"] for row in rows] == [int(i) * 12 for i in segs.index]
    # per-example scores: brute-force mean cosine distance to the other segments
    ex = repdisp.extract(tiny_gpt2, segs, "final", "last", cache=False, progress=False)
    u = ex.get("final", "last").astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    d = 1 - u @ u.T
    brute = d.sum(axis=1) / 4
    assert np.allclose([row["score@final"] for row in rows], brute, atol=1e-6)


@dataclass
class _Toy(Result):
    kind: ClassVar[str] = "toy-test"
    name: str
    values: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def explain_nonfinite(self, key, value):
        return "λ = 1: the kNN distribution alone gives the target zero probability"


def test_infinities_become_null_with_a_note(tmp_path):
    toy = _Toy("a", [1.0, math.inf, -math.inf, math.nan], seconds=1.5)
    (path, *_rest) = write_result(tmp_path, "toy", toy, figure=False)
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    doc = json.loads(text)
    assert doc["values"] == [1.0, None, None, None]
    assert [(n["key"], n["value"]) for n in doc["notes"]] == [
        ("values[1]", "inf"), ("values[2]", "-inf"), ("values[3]", "nan"),
    ]  # fmt: skip
    assert "λ = 1" in doc["notes"][0]["why"]
    assert doc["run"]["seconds"] == 1.5 and "seconds" not in doc
    back = load_result(path)
    assert isinstance(back, _Toy) and back.seconds == 1.5
    assert back.values[:3] == [1.0, math.inf, -math.inf] and math.isnan(back.values[3])
    _, notes = strict_json({"x": {"y": [float("inf")]}})
    assert notes[0]["key"] == "x.y[0]" and "JSON has no" in notes[0]["why"]


def test_refuses_to_overwrite_when_asked(tmp_path):
    write_result(tmp_path, "toy", _Toy("a"), figure=False)
    with pytest.raises(repdisp.RepdispError, match="exists"):
        write_result(tmp_path, "toy", _Toy("b"), figure=False, overwrite=False)


def test_api_call_is_recorded(tiny_gpt2):
    r = repdisp.measure(tiny_gpt2, segments=3, seq_len=8, bootstrap=5, cache=False, progress=False)
    assert r.provenance["call"].startswith("repdisp.measure(model=<LoadedModel tiny-gpt2>")
    assert "segments=3" in r.provenance["call"]
    assert r.provenance["models"][0]["identity"] == "tiny-gpt2:seed0"
