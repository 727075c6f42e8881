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
    # the same command twice (--overwrite: the second run replaces the first one's files)
    assert main(tiny_measure + ["--out", str(out), "--overwrite"]) == 0
    first = (out / "measure.json").read_bytes()
    seg1 = (out / "measure_segments.parquet").read_bytes()
    csv1, png1 = (out / "measure.csv").read_bytes(), (out / "measure.png").read_bytes()
    assert main(tiny_measure + ["--out", str(out), "--overwrite"]) == 0
    second = (out / "measure.json").read_bytes()
    assert first != second  # the run block (date, seconds) differs ...
    a, b = json.loads(first), json.loads(second)
    assert a.pop("run").keys() == b.pop("run").keys() == {"date", "host", "seconds"}
    # ... and nothing else: byte-for-byte once `run` is removed
    assert json.dumps(a, indent=2) == json.dumps(b, indent=2)
    assert (out / "measure_segments.parquet").read_bytes() == seg1
    assert (out / "measure.csv").read_bytes() == csv1 and (out / "measure.png").read_bytes() == png1
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


@dataclass
class _Plain(Result):
    ci_low: float
    ci_high: float


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
    # a CI that no bootstrap resample could define: NaN, with the generic explanation
    (path, *_rest) = write_result(tmp_path, "plain", _Plain(float("nan"), 0.5), figure=False)
    (note,) = json.loads(path.read_text())["notes"]
    assert note["key"] == "ci_low" and note["value"] == "nan" and "bootstrap" in note["why"]


def test_refuses_to_overwrite_when_asked(tmp_path):
    write_result(tmp_path, "toy", _Toy("a"), figure=False)
    with pytest.raises(repdisp.RepdispError, match="exists"):
        write_result(tmp_path, "toy", _Toy("b"), figure=False, overwrite=False)


def test_api_call_is_recorded(tiny_gpt2):
    r = repdisp.measure(tiny_gpt2, segments=3, seq_len=8, bootstrap=5, cache=False, progress=False)
    assert r.provenance["call"].startswith("repdisp.measure(model=<LoadedModel tiny-gpt2>")
    assert "segments=3" in r.provenance["call"]
    assert r.provenance["models"][0]["identity"] == "tiny-gpt2:seed0"


# ---------------------------------------------------------------------------------------------
# every result kind: written by write_result, read back by load_result, same values and frames


def _kinds(tiny_gpt2):
    """One small real result of every kind that does not need the kNN-LM or gap modules."""
    import copy

    from repdisp.analyses.clusters import clusters
    from repdisp.analyses.compare import compare_models
    from repdisp.analyses.layers import layers
    from repdisp.analyses.ppl_dispersion import ppl_vs_dispersion
    from repdisp.applications.accuracy_probe import accuracy_probe
    from repdisp.applications.hard_slices import hard_slices
    from repdisp.applications.knnlm.keys import profile_keys
    from repdisp.applications.mcqa import MCItem, MCResult
    from repdisp.core.corpus import make_segments
    from repdisp.core.sampling import Sampling
    from repdisp.training.finetune import BeforeAfter, FinetuneResult
    from repdisp.training.sweep import SweepResult

    samp = Sampling(segments=24, seq_len=12, cache=False, progress=False)
    other = copy.deepcopy(tiny_gpt2)
    other.name, other.identity = "tiny-other", "tiny-other:1"
    import torch

    with torch.no_grad():
        other.model.transformer.h[0].mlp.c_fc.weight.mul_(3.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8))
    correct = np.arange(40) < 20
    mc = MCResult(
        [MCItem(str(i), f"q{i}", ["a", "b"], 0) for i in range(40)],
        [np.zeros(2)] * 40,
        np.where(correct, 0, 1),
        np.where(correct, 0, 1),
        x,
        model="m",
    )
    windows = make_segments(tiny_gpt2.tokenizer, "python-docs", None, 16)
    grid_row = {"lr": 1e-3, "aux_weight": 0.1, "step": 10, "domain": "d", "split": "test",
                "mean": 5.0, "sd": 0.1, "values": [4.9, 5.1]}  # fmt: skip
    t2 = {"lr": 1e-3, "aux_weight": 0.1, "step": 10, "domain": "d", "base_mean": 5.0,
          "base_sd": 0.1, "aux_mean": 4.8, "aux_sd": 0.1, "base_dispersion": 0.3,
          "aux_dispersion": 0.4, "n_seeds": 2, "base_values": [4.9, 5.1]}  # fmt: skip
    return {
        "measure": repdisp.measure(tiny_gpt2, segments=6, seq_len=12, bootstrap=20, cache=False,
                                   progress=False, sites=["final", "0.attn"],
                                   per_segment=True),  # fmt: skip
        "ppl": ppl_vs_dispersion([tiny_gpt2], ["python-docs"], sampling=samp, bin_size=4, n_bins=3,
                                 bootstrap=30, per_segment=True),  # fmt: skip
        "layers": layers(tiny_gpt2, "python-docs", sites="embed,0,final", sampling=samp,
                         bin_size=4, n_bins=3, bootstrap=30),
        "compare": compare_models([tiny_gpt2, other], "python-docs", sampling=samp, bootstrap=30),
        "clusters": clusters([tiny_gpt2], "python-docs", ngram=2, min_count=5, per_cluster=4,
                             context=6, n_clusters=4, cache=False, progress=False,
                             bootstrap=20),  # fmt: skip
        "probe": accuracy_probe(mc, model="m", task="t", levels=(0.0, 0.5, 1.0), sample=10,
                                seeds=3),
        "hard": hard_slices(mc, 0.25),
        "keys": profile_keys(tiny_gpt2, windows, chunks=[4, 8], seeds=2, cache=False,
                             progress=False),
        "finetune": FinetuneResult("b", "d", "lora", 2, 1e-3, 2, 16, 0, 8, 16, 0.9, 10, 64, 100,
                                   1000, "ck", None, 1.5, [{"step": 1, "loss": 5.0,
                                                            "learning_rate": 1e-3}]),  # fmt: skip
        "before_after": BeforeAfter("h.txt", 6, 16, [{"model": "base", "spec": "b",
                                    "mean_ppl": 9.0, "token_ppl": 8.0, "dispersion": 0.4,
                                    "ci_low": 0.3, "ci_high": 0.5}], 0.01, -0.02, 0.03, 0.5),
        "sweep": SweepResult("cfg", [grid_row], {"0.001": 0.1}, [t2]),
        **_synthetic_kinds(),
    }  # fmt: skip


def _synthetic_kinds():
    """gap, kNN-LM eval/select and a training run, built from their fields (no FAISS, no GGUF)."""
    from repdisp.applications.gap.analysis import CheckpointGap, GapResult
    from repdisp.applications.gap.distances import GapComponents
    from repdisp.applications.knnlm.datastore import BuildReport
    from repdisp.applications.knnlm.evaluation import KnnEval, SiteEval
    from repdisp.applications.knnlm.keys import KeyProfile, KeyRow
    from repdisp.applications.knnlm.select import SelectReport
    from repdisp.core.stats import Correlation
    from repdisp.training.run import RunResult

    ck = [
        CheckpointGap(f"m{i}", "gguf", "output.weight", True, (512, 32), 10, 12, ["x"], [],
                      GapComponents(0.5 + i / 10, 0.6, 0.7), GapComponents(1.0, 1.1, 1.2), 30.0 + i)
        for i in range(3)
    ]  # fmt: skip
    gap = GapResult("code", "everyday", "cosine", ck, ["m2", "m1", "m0"],
                    Correlation("spearman", 1.0, 0.0, 1.0, 1.0, 3), None, ["a note"])  # fmt: skip
    sites = [
        SiteEval(site=s, n_keys=100, index="flat", knn_ppl=ppl, best_ppl=9.0 + k,
                 best_lmbda=0.25, best_temperature=1.0, knn_only_coverage=0.4,
                 grid=[{"lmbda": 1.0, "temperature": 1.0, "ppl": math.inf},
                       {"lmbda": 0.25, "temperature": 1.0, "ppl": 9.0 + k}])
        for k, (s, ppl) in enumerate((("1.attn", 11.0), ("1.ffn", 12.0)))
    ]  # fmt: skip
    ev = KnnEval(model="m", datastore="ds", data="d", n_tokens=500, n_targets=400, context=32,
                 stride=16, k=8, lmbda=0.25, temperature=1.0, base_ppl=10.0, unigram_ppl=10.5,
                 unigram_lmbda=0.1, sites=sites, forward_seconds=1.0, search_seconds=2.0,
                 seconds=3.0)  # fmt: skip
    prof = KeyProfile(model="m", data="d", chunk_len=16, n_windows=20, seeds=2, chunks=[4],
                      sites=["1.attn", "1.ffn"], n_extracted=8, recommended="1.ffn",
                      rows=[KeyRow(site="1.attn", n_chunks=4, mean=0.3, std=0.01, values=[0.29, 0.31]),
                            KeyRow(site="1.ffn", n_chunks=4, mean=0.4, std=0.01, values=[0.39, 0.41])], seconds=0.5)  # fmt: skip
    build = BuildReport(folder="ds", n_tokens=500, n_keys=100, sites=["1.attn", "1.ffn"],
                        shards_computed=2, shards_reused=0, forward_seconds=1.0,
                        write_seconds=0.5, index={"1.attn": {"type": "flat"}},
                        seconds=2.0)  # fmt: skip
    sel = SelectReport(model="m", recommended="1.ffn", winner="1.attn", picked_winner=False,
                       profile=prof, evaluation=ev, build=build, margin_nats=0.01,
                       margin_ci=(0.005, 0.02))  # fmt: skip
    run = RunResult("cfg", "single", ["d"], 1e-3, 0.1, 0, 4, 8, 16, 1000, 1, {"d": 10},
                    [{"step": 1, "loss": 5.0, "ce": 5.0, "aux": 0.1, "dispersion": 0.3}],
                    [{"step": 4, "domain": "d", "split": "test", "ppl": 90.0, "nll": 4.5,
                      "dispersion": 0.3}], 12.5)  # fmt: skip
    return {"gap": gap, "knnlm_eval": ev, "knnlm_select": sel, "train": run}


def test_knnlm_lambda_one_infinity_is_explained(tmp_path):
    ev = _synthetic_kinds()["knnlm_eval"]
    doc = json.loads(write_result(tmp_path, "ev", ev)[0].read_text())
    assert doc["sites"][0]["grid"][0]["ppl"] is None
    (note,) = [n for n in doc["notes"] if n["key"] == "sites[0].grid[0].ppl"]
    assert note["value"] == "inf" and "λ = 1" in note["why"] and "probability 0" in note["why"]
    assert doc["run"]["search_seconds"] == 2.0 and "search_seconds" not in doc
    back = load_result(tmp_path / "ev.json")
    assert back.sites[0].grid[0]["ppl"] == math.inf and back.search_seconds == 2.0


def test_load_result_reads_every_kind_back(tiny_gpt2, tmp_path):
    import pandas as pd

    kinds = _kinds(tiny_gpt2)
    for name, result in kinds.items():
        paths = write_result(tmp_path, name, result)
        back = load_result(paths[0])
        assert type(back) is type(result), name
        same = json.dumps(back.to_dict(), sort_keys=True, default=repr)  # nan == nan here
        assert same == json.dumps(result.to_dict(), sort_keys=True, default=repr), name
        assert back.segments() == result.segments(), name  # from NAME_segments.parquet
        assert back.segments(long=True) == result.segments(long=True), name
        assert (result.segments() is not None) == (name in ("measure", "ppl")), name
        tables = result.tables()
        assert tables and all(isinstance(rows, list) for rows in tables.values()), name
        for tname in tables:
            pd.testing.assert_frame_equal(back.to_frame(tname), result.to_frame(tname))
        assert isinstance(back.table(), str) and back.table()
        fig = result.figure()
        if fig is not None:
            from matplotlib.figure import Figure

            assert isinstance(fig, Figure) and (tmp_path / f"{name}.png").stat().st_size > 0
        doc = json.loads(paths[0].read_text())
        assert doc["kind"] == result.kind and "provenance" in doc and "run" in doc
        assert back.provenance["python"] == doc["provenance"]["python"]
    # the whole folder at once: every result by its name, equal to the one written
    folder = load_result(tmp_path)
    assert sorted(folder) == sorted(kinds)
    for name, result in kinds.items():
        assert type(folder[name]) is type(result)
        assert json.dumps(folder[name].to_dict(), sort_keys=True, default=repr) == json.dumps(
            result.to_dict(), sort_keys=True, default=repr
        )
        assert folder[name].segments() == result.segments(), name
    # the CSV written beside it holds the main table
    main = pd.read_csv(tmp_path / "ppl.csv")
    pd.testing.assert_frame_equal(main, kinds["ppl"].to_frame(), check_dtype=False)
    # no pyplot figure was ever opened (no global backend state touched)
    import sys

    assert (
        "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()
    )


def test_load_result_generic_and_parquet(tmp_path, tiny_gpt2):
    from repdisp.io.results import GenericResult, write_segments

    (tmp_path / "old.json").write_text(json.dumps({"model": "m", "rows": [{"a": 1}, {"a": 2}]}))
    r = load_result(tmp_path / "old.json")
    assert isinstance(r, GenericResult) and list(r.to_frame("rows")["a"]) == [1, 2]
    m = repdisp.measure(tiny_gpt2, segments=4, seq_len=8, bootstrap=5, cache=False,
                        progress=False, per_segment=True)  # fmt: skip
    path = write_segments(tmp_path, "m", m.segments(), result=m)
    frame = load_result(path).to_frame()
    assert list(frame.columns[:8]) == ["model", "data", "segment", "source", "token_offset",
                                       "ppl", "mean_nll", "last_token_nll"]  # fmt: skip
    assert load_result(path).provenance["models"][0]["identity"] == "tiny-gpt2:seed0"
    assert frame["ppl"].tolist() == [row["ppl"] for row in m.segments()]
    with pytest.raises(repdisp.RepdispError, match="no such result"):
        load_result(tmp_path / "missing.json")


def test_report_opens_with_headline_card_then_figure_tables_provenance(tmp_path):
    from html.parser import HTMLParser

    from repdisp.io.report import render
    from repdisp.training.finetune import BeforeAfter

    rows = [
        {"model": m, "spec": m, "mean_ppl": 9.0, "token_ppl": t, "dispersion": d,
         "ci_low": d - 0.01, "ci_high": d + 0.01}
        for m, t, d in (("base", 8.0, 0.40), ("fine-tuned", 7.0, 0.45))
    ]  # fmt: skip
    ba = BeforeAfter("held.txt", 6, 16, rows, 0.05, 0.03, 0.07, 0.5)
    write_result(tmp_path, "finetune_eval", ba, command=["repdisp", "finetune", "--eval-only"])
    toy = _Toy("a", [1.0, math.inf])
    write_result(tmp_path, "toy", toy, figure=False)
    page = render(tmp_path)

    class Order(HTMLParser):
        def __init__(self):
            super().__init__()
            self.seen = []

        def handle_starttag(self, tag, attrs):
            cls = dict(attrs).get("class", "")
            if tag == "img" or tag == "h3" or (tag == "div" and cls.startswith("card")):
                self.seen.append("card" if tag == "div" else tag)

    o = Order()
    o.feed(page[: page.index('id="r-toy"')])
    assert o.seen[:3] == ["card", "img", "h3"]  # answer first, then the figure, then tables
    assert "+0.0500 [95% CI +0.0300, +0.0700]" in page and "significant (95% CI excludes 0)" in page
    assert "repdisp finetune --eval-only" in page  # provenance: the command line
    assert "<h3>provenance</h3>" in page and "transformers" in page
    assert "values[1]</code> = inf (written as null)" in page  # the notes of the toy result
    assert "meta name='viewport'" in page and "http" not in page.replace("http-equiv", "")


def test_ppl_vs_dispersion_segments_agree_with_bins(tiny_gpt2):
    """Per-segment rows: each selected bin's rows average to the bin's mean perplexity and their
    within-segment dispersions to the bin's ``within`` value."""
    from repdisp.analyses.ppl_dispersion import ppl_vs_dispersion
    from repdisp.core.sampling import Sampling

    samp = Sampling(segments=24, seq_len=12, cache=False, progress=False)
    r = ppl_vs_dispersion([tiny_gpt2], ["python-docs"], sampling=samp, bin_size=4, n_bins=3,
                          bootstrap=10, per_segment=True)  # fmt: skip
    rows = r.segments()
    assert len(rows) == 24 and {row["model"] for row in rows} == {"tiny-gpt2"}
    for b in r.series[0].bins:
        members = [row for row in rows if row["bin"] == b.bin]
        assert len(members) == b.n == 4
        assert np.mean([m["ppl"] for m in members]) == pytest.approx(b.mean_ppl, rel=1e-9)
        within = [m["within_dispersion@final"] for m in members]
        assert np.mean(within) == pytest.approx(b.within, rel=1e-9)
    assert sum(row["bin"] is None for row in rows) == 24 - 12  # segments in no selected bin


def test_command_line_is_named_only_while_the_command_runs(tiny_gpt2, tmp_path):
    from repdisp.io import results

    with results.command_line(["repdisp", "measure", "--out", "x"]):
        inside = results.provenance(None)["command"]
    assert inside == "repdisp measure --out x"
    assert results.provenance(None)["command"] is None  # a later library call: no command
