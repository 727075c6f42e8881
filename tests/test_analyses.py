"""Algorithm 1, binned dispersion modes, correlations, the analysis commands and the HTML report."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from scipy import stats as sps

from repdisp.analyses.binning import select_bins
from repdisp.analyses.ppl_dispersion import BinPoint, bin_points, correlate
from repdisp.cli import main
from repdisp.core.errors import RepdispError
from repdisp.io.report import collect, render

# ----------------------------------------------------------------------------- Algorithm 1


def test_algorithm1_hand_example_with_duplicates_and_fill():
    # 13 segments, B = 2: six full bins (the largest value, 100, is left over and dropped) with
    # means 1, 2, 3, 4, 10, 30.  K = 5 targets: 1, 8.25, 15.5, 22.75, 30.
    # Nearest bins: t1->bin0, t2->bin4 (|10-8.25|=1.75), t3->bin4 (5.5 < 14.5, duplicate),
    # t4->bin5 (7.25 < 12.75), t5->bin5 (duplicate).  Unique: {0, 4, 5}.
    # Fill, in order of k: t3=15.5 takes its nearest unused bin, bin3 (mean 4, distance 11.5);
    # t5=30 takes its nearest unused bin, bin2 (mean 3). Selected: 0, 2, 3, 4, 5.
    values = [9, 0.5, 3.5, 25, 1.8, 100, 2.9, 11, 1.5, 35, 2.2, 3.1, 4.5]
    sel = select_bins(values, bin_size=2, n_bins=5)
    np.testing.assert_allclose(sel.bin_means, [1, 2, 3, 4, 10, 30])
    np.testing.assert_allclose(sel.targets, [1, 8.25, 15.5, 22.75, 30])
    assert sel.chosen.tolist() == [0, 2, 3, 4, 5]
    np.testing.assert_allclose(sel.means, [1, 3, 4, 10, 30])
    members = [sorted(m.tolist()) for m in sel.members]
    assert members == [[1, 8], [6, 11], [2, 12], [0, 7], [3, 9]]
    assert 5 not in np.concatenate(sel.members)  # the left-over highest value


def test_algorithm1_no_duplicates_and_errors():
    sel = select_bins(np.arange(100.0), bin_size=10, n_bins=10)  # uniform: every bin once
    assert sel.chosen.tolist() == list(range(10))
    assert all(len(m) == 10 for m in sel.members)
    sel = select_bins(np.arange(100.0), bin_size=10, n_bins=2)
    assert sel.chosen.tolist() == [0, 9]
    with pytest.raises(RepdispError, match="only 3 bins"):
        select_bins(np.arange(30.0), bin_size=10, n_bins=4)
    with pytest.raises(RepdispError):
        select_bins(np.arange(30.0), bin_size=10, n_bins=1)
    with pytest.raises(RepdispError):
        select_bins([1.0, np.nan, 2.0, 3.0], bin_size=2, n_bins=2)


# ------------------------------------------------------------------- modes vs brute force


def _brute_dispersion(x: np.ndarray) -> float:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = u @ u.T
    i, j = np.triu_indices(len(x), 1)
    return float(np.mean(1 - c[i, j]))


def test_across_and_within_modes_vs_brute_force():
    rng = np.random.default_rng(1)
    n, t, d = 40, 9, 6
    tokens = rng.normal(size=(n, t, d)) + rng.normal(size=(n, 1, d))
    ppl = rng.lognormal(3, 1, n)
    last = tokens[:, -1]
    within = np.array([_brute_dispersion(seg) for seg in tokens])
    sel = select_bins(ppl, 5, 4)
    points = bin_points(ppl, last, within, sel)
    order = np.argsort(ppl)
    for p in points:
        idx = order[p.bin * 5 : (p.bin + 1) * 5]
        assert p.n == 5
        assert p.mean_ppl == pytest.approx(ppl[idx].mean())
        assert p.across == pytest.approx(_brute_dispersion(last[idx]), abs=1e-12)
        assert p.within == pytest.approx(within[idx].mean(), abs=1e-12)


def test_correlations_match_scipy():
    rng = np.random.default_rng(2)
    x, a, w = rng.lognormal(2, 1, 12), rng.random(12), rng.random(12)
    points = [BinPoint(k, 10, float(x[k]), float(a[k]), float(w[k])) for k in range(12)]
    cs = correlate(points, reps=200, seed=0)
    x = [p.mean_ppl for p in points]
    for mode in ("across", "within"):
        y = [getattr(p, mode) for p in points]
        ref_p, ref_s = sps.pearsonr(x, y), sps.spearmanr(x, y)
        assert cs[mode]["pearson"].r == pytest.approx(ref_p[0], abs=1e-12)
        assert cs[mode]["pearson"].p_value == pytest.approx(ref_p[1], rel=1e-9)
        assert cs[mode]["spearman"].r == pytest.approx(ref_s[0], abs=1e-12)
        assert cs[mode]["spearman"].p_value == pytest.approx(ref_s[1], rel=1e-9)
        c = cs[mode]["pearson"]
        assert -1 <= c.ci_low <= c.r <= c.ci_high <= 1


# ----------------------------------------------------------- tiny GPT-2 end to end (CLI)

WORDS = [f"w{i}" for i in range(60)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-init 2-block GPT-2 with a word-level tokenizer, saved as a model folder, and a
    text file of random words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny")
    vocab = {w: i for i, w in enumerate(["[UNK]", "[EOS]", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="[EOS]")
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(vocab), n_positions=64)
    model = GPT2LMHeadModel(cfg)
    folders = []
    for k in range(2):  # two models with the same tokenizer, for compare
        folder = root / f"model{k}"
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        folders.append(folder)
        torch.nn.init.normal_(model.transformer.h[0].mlp.c_fc.weight, std=0.5)
    rng = np.random.default_rng(0)
    text = "\n".join(
        " ".join(rng.choice(WORDS, size=rng.integers(20, 60), p=None)) for _ in range(60)
    )
    data = root / "words.txt"
    data.write_text(text)
    return folders, data


def test_ppl_vs_dispersion_cli_matches_brute_force(tiny, tmp_path, monkeypatch):
    import torch

    from repdisp.core.corpus import make_segments
    from repdisp.core.models import load_model

    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    (folder, _), data = tiny
    out = tmp_path / "out"
    args = ["--data", str(data), "--segments", "40", "--seq-len", "12", "--quiet"]
    assert main(["ppl-vs-dispersion", "--model", str(folder), *args, "--bin-size", "5",
                 "--bins", "4", "--bootstrap", "100", "--stats-reps", "60", "--permutations",
                 "60", "--curve-bins", "8", "--out", str(out)]) == 0  # fmt: skip
    for suffix in (".json", ".csv", "_correlations.csv", "_stats.csv", "_curve.csv", ".png"):
        assert (out / f"ppl_vs_dispersion{suffix}").stat().st_size > 0
    doc = json.loads((out / "ppl_vs_dispersion.json").read_text())
    (series,) = doc["series"]
    assert len(series["bins"]) == 4 and series["n_segments"] == 40

    # brute force: HF forward with hidden states, NLL from logits, both modes in float64
    lm = load_model(str(folder), "cpu", "float32")
    segs = make_segments(lm.tokenizer, str(data), 40, 12, 0)
    with torch.no_grad():
        outp = lm.model(torch.from_numpy(segs.ids), output_hidden_states=True)
    h = outp.hidden_states[-1].double().numpy()[:, 1:]  # skip_first=1
    logp = torch.log_softmax(outp.logits.double(), -1)
    nll = -logp[:, :-1].gather(2, torch.from_numpy(segs.ids)[:, 1:, None])[..., 0]
    ppl = np.exp(nll.mean(1).numpy())
    within = np.array([_brute_dispersion(seg) for seg in h])
    order = np.argsort(ppl)
    for b in series["bins"]:
        idx = order[b["bin"] * 5 : (b["bin"] + 1) * 5]
        assert b["mean_ppl"] == pytest.approx(ppl[idx].mean(), rel=1e-4)
        assert b["across"] == pytest.approx(_brute_dispersion(h[idx, -1]), abs=1e-5)
        assert b["within"] == pytest.approx(within[idx].mean(), abs=1e-5)
    x = [b["mean_ppl"] for b in series["bins"]]
    r = series["correlations"]["within"]["spearman"]["r"]
    assert r == pytest.approx(sps.spearmanr(x, [b["within"] for b in series["bins"]])[0])
    # segment-level statistics over all 40 segments, next to the binned ones
    st = series["stats"]
    rho = st["within"]["spearman"]
    assert rho["value"] == pytest.approx(sps.spearmanr(ppl, within)[0], abs=2e-3)
    assert rho["ci_low"] <= rho["value"] <= rho["ci_high"] and rho["n"] == 40
    slope = sps.linregress(np.log2(ppl), within).slope
    assert st["within"]["slope"]["value"] == pytest.approx(slope, rel=1e-3, abs=1e-5)
    curve = st["across"]["curve"]
    assert len(curve) == 8 and sum(c["n"] for c in curve) == 40
    first = order[:5]  # 40 segments in 8 equal-count bins of 5
    assert curve[0]["dispersion"] == pytest.approx(_brute_dispersion(h[first, -1]), abs=1e-5)
    assert st["across"]["pearson"]["value"] == pytest.approx(
        series["correlations"]["across"]["pearson"]["r"], abs=1e-9
    )
    assert 1 / 61 <= st["across"]["pearson"]["p_perm"] <= 1

    # last-token mode: one series per context length, binned by the last token's perplexity
    assert main(["ppl-vs-dispersion", "--model", str(folder), *args, "--bin-size", "5",
                 "--bins", "3", "--bootstrap", "50", "--last-token", "--contexts", "6,12",
                 "--out", str(out), "--name", "last"]) == 0  # fmt: skip
    doc = json.loads((out / "last.json").read_text())
    assert [s["seq_len"] for s in doc["series"]] == [6, 12]
    assert {s["perplexity"] for s in doc["series"]} == {"last-token"}

    # merge: both results' series in one figure, numbers unchanged
    assert main(["merge-ppl", str(out / "ppl_vs_dispersion.json"), str(out / "last.json"),
                 "--out", str(out), "--name", "merged"]) == 0  # fmt: skip
    merged = json.loads((out / "merged.json").read_text())
    assert [s["seq_len"] for s in merged["series"]] == [12, 6, 12]
    assert merged["series"][0] == series and merged["series"][1:] == doc["series"]
    assert (out / "merged.png").exists()
    assert main(["merge-ppl", str(data), "--out", str(out)]) == 2


def test_layers_and_compare_cli(tiny, tmp_path, monkeypatch, capsys):
    from repdisp.analyses.compare import compare_models as compare
    from repdisp.analyses.ppl_dispersion import Sampling

    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    (m0, m1), data = tiny
    out = tmp_path / "out"
    common = ["--data", str(data), "--segments", "40", "--seq-len", "12", "--quiet"]
    stat_args = ["--stats-reps", "40", "--permutations", "40", "--curve-bins", "8"]
    assert main(["layers", "--model", str(m0), *common, *stat_args, "--sites", "embed,0,1,final",
                 "--bin-size", "5", "--bins", "4", "--bootstrap", "50", "--out", str(out)]) == 0  # fmt: skip
    doc = json.loads((out / "layers.json").read_text())
    assert [layer["site"] for layer in doc["layers"]] == ["embed", "0.ffn", "1.ffn", "final"]
    assert all(len(layer["bins"]) == 4 for layer in doc["layers"])
    # the final site equals ppl-vs-dispersion's result on the same bins
    assert main(["ppl-vs-dispersion", "--model", str(m0), *common, *stat_args, "--bin-size", "5",
                 "--bins", "4", "--bootstrap", "50", "--out", str(out)]) == 0  # fmt: skip
    ref = json.loads((out / "ppl_vs_dispersion.json").read_text())["series"][0]["bins"]
    for got, want in zip(doc["layers"][-1]["bins"], ref, strict=True):
        assert got == pytest.approx(want)
    # segment-level statistics: the final site's equal ppl-vs-dispersion's (same seed, re-binned
    # replicates shared by all sites)
    ref_stats = json.loads((out / "ppl_vs_dispersion.json").read_text())["series"][0]["stats"]
    for mode, keys in (("within", ("spearman", "slope")), ("across", ("pearson", "slope"))):
        for k in keys:
            got, want = doc["layers"][-1]["stats"][mode][k], ref_stats[mode][k]
            for f in ("value", "ci_low", "ci_high", "p_perm"):
                assert got[f] == pytest.approx(want[f], abs=1e-9)
    assert (out / "layers_stats.csv").exists()
    assert (out / "layers.png").exists() and (out / "layers_correlations.csv").exists()

    assert main(["compare", "--model", str(m0), "--model", str(m1), *common,
                 "--bootstrap", "100", "--out", str(out)]) == 0  # fmt: skip
    doc = json.loads((out / "compare.json").read_text())
    assert doc["identical_segments"] is True
    a, b = doc["models"]
    assert a["across"] != b["across"]
    for m in (a, b):
        assert m["across_ci_low"] <= m["across"] <= m["across_ci_high"]
        assert m["within_ci_low"] <= m["within"] <= m["within_ci_high"]
    assert a["across_diff"] is None and a["within_diff"] is None  # the reference model
    for mode in ("across", "within"):  # paired difference: same segments resampled for both
        assert b[f"{mode}_diff"] == pytest.approx(b[mode] - a[mode], abs=1e-9)
        assert b[f"{mode}_diff_ci_low"] <= b[f"{mode}_diff"] <= b[f"{mode}_diff_ci_high"]
    assert (out / "compare.png").exists() and (out / "compare.csv").exists()
    assert "identical" in capsys.readouterr().out
    with pytest.raises(RepdispError, match="at least 2 models"):
        compare([str(m0)], str(data), sampling=Sampling(segments=4, seq_len=8))


def test_cli_error_is_one_line(tiny, tmp_path, capsys):
    (m0, _), data = tiny
    rc = main(["ppl-vs-dispersion", "--model", str(m0), "--data", str(data), "--segments", "20",
               "--seq-len", "8", "--bin-size", "10", "--bins", "5", "--no-cache", "--quiet",
               "--out", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (transformers prints its loading bar before it)
    assert rc == 2 and "Traceback" not in err
    assert last.startswith("repdisp: error: 20 segments make only 2 bins")


# ------------------------------------------------------------------------------ report


class _Structure(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.tables, self.h2 = [], [], 0, []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "table":
            self.tables += 1
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data)
            self._in_h2 = False


def test_report_structure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from repdisp.io.results import save_figure, write_csv, write_json

    write_json(tmp_path / "alpha.json", {"model": "m", "r": 0.5, "rows": [{"a": 1, "b": 2.5}]})
    write_csv(tmp_path / "alpha.csv", [{"bin": 0, "x": 1.5}, {"bin": 1, "x": 2.5}])
    write_csv(tmp_path / "alpha_correlations.csv", [{"mode": "across", "r": -0.3}])
    for name in ("alpha.png", "alpha_extra.png", "sub/orphan.png"):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        save_figure(fig, tmp_path / name)
    write_json(tmp_path / "sub" / "beta.json", {"values": list(range(50)), "nested": {"k": [1, 2]}})
    (tmp_path / "report.png").write_bytes(b"not part of the report")

    results = collect(tmp_path)
    assert [r.name for r in results] == ["alpha", "sub/beta", "sub/orphan"]
    assert [p.name for p in results[0].images] == ["alpha.png", "alpha_extra.png"]
    assert [p.name for p in results[0].tables] == ["alpha.csv", "alpha_correlations.csv"]

    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert re.sub(r"rendered [^.]*", "", page) == re.sub(r"rendered [^.]*", "", render(tmp_path))
    s = _Structure()
    s.feed(page)
    assert s.h2 == ["alpha", "sub/beta", "sub/orphan"] and len(s.sections) == 3
    assert len(s.images) == 3
    assert all(src.startswith("data:image/png;base64,") for src in s.images)
    first = base64.b64decode(s.images[0].split(",", 1)[1])
    assert first == (tmp_path / "alpha.png").read_bytes()
    assert s.tables >= 5  # two CSV tables, alpha's JSON and its nested rows, beta's JSON
    assert "0.5" in page and "-0.3" in page and "(50 values)" in page
    assert "<td>m</td>" in page and '<td class="num">1</td>' in page  # JSON value, CSV number
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched
    with pytest.raises(RepdispError):
        render(tmp_path / "sub" / "nothing")
