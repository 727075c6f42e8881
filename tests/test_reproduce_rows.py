"""repdisp reproduce, the rows added for the whole paper: Fig. 4 at several context lengths,
Fig. 31 (per-chunk sub-layer link), §2.2(2) emergence with training (random init), §3.3 kNN-LM
perplexity per key; ``--only``; the per-section summary and grouping of the page. Verdict logic
on planted effects both ways, against independent references (scipy, brute force); rows present
on a tiny GPT-2 grid; resume (a rerun runs no forward pass)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from repdisp.cli import main
from repdisp.reproduce.claims import Where
from repdisp.reproduce.emergence import emergence_rows
from repdisp.reproduce.knnlm_ppl import knnlm_rows, paired_margin
from repdisp.reproduce.page import group_rows, summary
from repdisp.reproduce.sublayers import link_stats, sublayer_rows
from repdisp.reproduce.verdict import emergence_verdict

AT = Where("org/m", None, "m · wiki", data="wiki.raw")  # type: ignore[arg-type]


def _cfg():
    from repdisp.reproduce.config import load_config

    return load_config("cpu", overrides={"models": ["org/m"], "data": ["wiki.raw"]})


@pytest.mark.parametrize("strong", ["ffn", "attn"])
def test_sublayer_link_planted_both_ways(strong):
    rng = np.random.default_rng(1)
    n = 400
    log_ppl = rng.normal(size=n)
    noise = rng.normal(size=(2, n))
    big, small = -log_ppl + 0.3 * noise[0], -log_ppl + 3.0 * noise[1]  # both negative links
    d_ffn, d_attn = (big, small) if strong == "ffn" else (small, big)
    st = link_stats(np.exp(log_ppl), d_attn, d_ffn, reps=300, seed=0)
    # point estimates are scipy's Spearman; delta = |rho_ffn| - |rho_attn|
    ra, rf = sps.spearmanr(log_ppl, d_attn)[0], sps.spearmanr(log_ppl, d_ffn)[0]
    assert st["attn"]["value"] == pytest.approx(ra, abs=1e-12)
    assert st["ffn"]["value"] == pytest.approx(rf, abs=1e-12)
    assert st["delta"]["value"] == pytest.approx(abs(rf) - abs(ra), abs=1e-12)
    for k in ("attn", "ffn", "delta"):
        assert st[k]["ci_low"] <= st[k]["value"] <= st[k]["ci_high"]
    doc = st | {"seq_len": 128, "sites": {"attn": "29.attn", "ffn": "29.ffn"}}
    rows = sublayer_rows(_cfg(), AT, doc)
    assert [r["id"] for r in rows] == ["fig31"] * 3
    assert [r["verdict"] for r in rows[:2]] == ["supported", "supported"]  # both negative
    assert rows[2]["verdict"] == ("supported" if strong == "ffn" else "contradicted")
    assert "--only fig31" in rows[0]["command"]


def test_bias_corrected_interval():
    from scipy.stats import norm

    from repdisp.reproduce.sublayers import bc_interval

    rng = np.random.default_rng(4)
    boots = rng.normal(size=20001)
    # replicates centred on the estimate: the plain 2.5/97.5 percentiles
    assert bc_interval(boots, float(np.median(boots))) == pytest.approx(
        tuple(np.quantile(boots, [0.025, 0.975])), abs=1e-9
    )
    # replicates shifted below the estimate: z0 = Phi^-1(share below), quantiles Phi(2 z0 -/+ z)
    est = 1.2
    z0 = norm.ppf(np.mean(boots < est))
    lo, hi = bc_interval(boots, est)
    ref = np.quantile(boots, norm.cdf([2 * z0 - 1.959964, 2 * z0 + 1.959964]))
    assert (lo, hi) == pytest.approx(tuple(ref), abs=1e-6) and lo <= est <= hi
    plain = np.quantile(boots, [0.025, 0.975])
    assert lo > plain[0] + 0.5 and hi > plain[1] + 0.5  # moved toward the estimate's side


def test_sublayer_link_no_effect_is_inconclusive():
    rng = np.random.default_rng(2)
    ppl, a, f = np.exp(rng.normal(size=(3, 200)))
    rows = sublayer_rows(_cfg(), AT, link_stats(ppl, a, f, 300, 0) | {"seq_len": 8, "sites": {
        "attn": "1.attn", "ffn": "1.ffn"}})  # fmt: skip
    assert all(r["verdict"] == "inconclusive at this N" for r in rows)


@pytest.mark.parametrize("pick_is_better", [True, False])
def test_knnlm_margin_planted_both_ways(pick_is_better):
    rng = np.random.default_rng(3)
    n_t, seg = 2000, 50
    base = rng.normal(-3.0, 1.0, n_t)
    gain = 0.2 if pick_is_better else -0.2
    log_p = {"1.attn": base + gain + rng.normal(0, 0.3, n_t), "1.ffn": base}
    m = paired_margin(log_p, "1.attn", "1.ffn", seg, reps=500, seed=0)
    # the estimate is the plain mean difference over the kept targets (40 whole segments)
    assert m["segments"] == n_t // seg
    assert m["value"] == pytest.approx(float((log_p["1.attn"] - log_p["1.ffn"]).mean()), abs=1e-12)
    assert m["ci_low"] <= m["value"] <= m["ci_high"]
    ppl = {s: float(np.exp(-v.mean())) for s, v in log_p.items()}
    best = min(ppl, key=ppl.get)
    doc = {
        "candidates": ["1.attn", "1.ffn"], "dispersion": {"1.attn": 0.9, "1.ffn": 0.5},
        "ppl": ppl, "base_ppl": 30.0, "picked": "1.attn", "best": best, "other": "1.ffn",
        "margin_nats": m, "datastore_tokens": 5000, "n_targets": n_t,
        "settings": {"segment_tokens": seg, "k": 8, "context": 32},
    }  # fmt: skip
    (row,) = knnlm_rows(_cfg(), AT, doc)
    assert row["verdict"] == ("supported" if pick_is_better else "contradicted")
    assert (best == "1.attn") == pick_is_better
    assert f"dispersion picks 1.attn, lowest ppl {best}" in row["result"]


def _layers_doc(neg_blocks: int, m: int = 4) -> dict:
    """A layer-wise result of 2m blocks: ``neg_blocks`` of the second half with CI < 0."""

    def site(i: int, neg: bool) -> dict:
        ci = (-0.3, -0.1) if neg else (-0.1, 0.1)
        slope = {"value": sum(ci) / 2, "ci_low": ci[0], "ci_high": ci[1]}
        return {
            "site": f"{i}.ffn",
            "stats": {"across": {"slope": slope}, "within": {"slope": slope}},
        }

    sites = [site(i, False) for i in range(m)] + [site(m + i, i < neg_blocks) for i in range(m)]
    return {"n_segments": 100, "layers": [*sites, {"site": "final", "stats": {}}]}


def test_emergence_rule_and_row():
    assert emergence_verdict("supported", "inconclusive at this N") == "supported"
    assert emergence_verdict("supported", "contradicted") == "supported"
    assert emergence_verdict("supported", "supported") == "contradicted"
    assert emergence_verdict("inconclusive at this N", "supported") == "contradicted"
    assert emergence_verdict("inconclusive at this N", "inconclusive at this N").startswith("incon")
    cfg = _cfg()
    (row,) = emergence_rows(cfg, AT, _layers_doc(4), _layers_doc(0))
    assert row["verdict"] == "supported" and row["id"] == "emergence"
    assert "trained 4/4 blocks CI<0" in row["result"] and "random init 0/4" in row["result"]
    (row,) = emergence_rows(cfg, AT, _layers_doc(4), _layers_doc(3))  # there before training
    assert row["verdict"] == "contradicted"
    (row,) = emergence_rows(cfg, AT, _layers_doc(2), _layers_doc(0))  # trained rule not met
    assert row["verdict"] == "inconclusive at this N"


def test_page_groups_rows_by_figure_and_sums_up_each_section():
    rows = [
        {"claim": "§3.3 Table 1: x", "figure": "Table 1", "verdict": "supported"},
        {"claim": "§2.2(1) Fig. 4: a", "figure": "Fig. 4", "verdict": "contradicted"},
        {"claim": "§2.2(1) Fig. 3: b", "figure": "Fig. 3", "verdict": "supported"},
        {"claim": "§2.2(1) Fig. 4: c", "figure": "Fig. 4", "verdict": "inconclusive at this N"},
        {"claim": "App. B.3 Fig. 31: d", "figure": "Fig. 31", "verdict": "supported"},
        {"claim": "§9.9 new: e", "verdict": "supported"},  # no figure: its section, put last
    ]
    out = group_rows(rows)
    assert [r["figure"] for r in out] == [
        "Fig. 3",
        "Fig. 4",
        "Fig. 4",
        "Table 1",
        "Fig. 31",
        "§9.9",
    ]
    assert [r["claim"][-1] for r in out[1:3]] == ["a", "c"]  # grid order kept in a group
    text = summary(out)
    assert text[0] == (
        "- **§2.2** (perplexity vs dispersion): held in 1 of 3 rows (Fig. 3); did not hold: "
        "1 contradicted (Fig. 4), 1 inconclusive (Fig. 4)."
    )
    assert text[1] == "- **§3.3** (kNN-LM keys): held in 1 of 1 rows (Table 1)."
    assert text[2].startswith("- **App. B** (appendix analyses): held in 1 of 1")
    assert len(text) == 3  # one sentence per section with rows


@pytest.fixture
def tiny_cfg(tiny_gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        f"""
models: ["{tiny_gpt2_dir}"]
data: [python-docs]
segments: 40
seq_len: 16
dtype: float32
device: cpu
batch_size: 20
bin_size: 4
bins: 4
curve_bins: 5
stats_reps: 20
permutations: 20
layer_stats_reps: 10
bootstrap: 20
contexts: [8, 16, 32]
knn: null
gap: null
pushaway: null
mc: []
sublayers: {{reps: 50}}
random_init: {{seed: 0}}
knnlm: {{datastore_tokens: 1200, eval_tokens: 320, context: 32, stride: 16, k: 8,
         lmbda_grid: [0.25, 0.5], temperature_grid: [1.0], segment_tokens: 32, reps: 100,
         batch_size: 8}}
"""
    )
    return cfg, tmp_path / "run"


def _count_extractions(monkeypatch) -> list[str]:
    import repdisp.core.sampling as sampling

    calls: list[str] = []
    real = sampling.extract

    def counting(lm, segs, sites, pools, **kw):
        calls.append(f"{segs.ids.shape[1]}:{sites}")
        return real(lm, segs, sites, pools, **kw)

    monkeypatch.setattr(sampling, "extract", counting)
    return calls


def test_new_rows_end_to_end_only_and_resume(tiny_cfg, monkeypatch, capsys):
    cfg, out = tiny_cfg
    # --only: the Fig. 4 rows run the ppl step alone, one extraction per context length
    calls = _count_extractions(monkeypatch)
    args = ["reproduce", "--config", str(cfg), "--out", str(out), "--quiet"]
    assert main([*args, "--only", "fig4"]) == 0
    assert sorted(calls) == sorted(["16:all,-1.attn,final", "8:final", "32:final"])
    cell = next(out.glob("*/python-docs"))
    assert {p.name for p in cell.glob("[!.]*.json")} == {"ppl_vs_dispersion.json"}
    rows = json.loads((out / "claims.json").read_text())["claims"]
    assert [r["id"] for r in rows] == ["fig4"] * 3  # one row per length, nothing else
    assert [r["claim"].rsplit("ctx ", 1)[1][:2] for r in rows] == ["8)", "16", "32"]
    assert all("--only fig4" in r["command"] for r in rows)

    # the whole page: every new row kind present, grouped by figure; the 16-token series and the
    # main extraction are reused (only the random init adds a pass)
    calls.clear()
    assert main(args) == 0
    # the random-init model; the main extraction comes from the memo or the shard cache
    assert [c for c in calls if c != "16:all,-1.attn,final"] == ["16:all,final"]
    doc = json.loads((out / "claims.json").read_text())
    assert doc["missing"] == []
    rows = doc["claims"]
    ids = [r["id"] for r in rows]
    assert ids == ["fig3", "fig3-within", "fig4", "fig4", "fig4", "fig5", "emergence",
                   "knnlm-ppl", "fig31", "fig31", "fig31"]  # fmt: skip
    allowed = ("supported", "contradicted", "inconclusive")
    assert all(r["verdict"].startswith(allowed) and r["command"] for r in rows)
    knn = json.loads((cell / "knnlm_keys_ppl.json").read_text())
    assert knn["candidates"][:2] == ["1.attn", "1.ffn"] and knn["datastore_tokens"] == 1200
    assert knn["picked"] == max(knn["candidates"], key=knn["dispersion"].get)
    assert knn["best"] == min(knn["candidates"], key=knn["ppl"].get)
    assert knn["margin_nats"]["segments"] == knn["n_targets"] // 32
    lay = json.loads((cell / "layers_random_init.json").read_text())
    assert "random init, seed 0" in lay["model"] and len(lay["layers"]) == 3
    sub = json.loads((cell / "sublayer_link.json").read_text())
    assert sub["n_segments"] == 40 and sub["sites"] == {"attn": "1.attn", "ffn": "1.ffn"}
    md = (out / "findings.md").read_text()
    assert "- **§2.2** (perplexity vs dispersion): held in" in md
    assert "- **§3.3** (kNN-LM keys)" in md and "- **App. B** (appendix analyses)" in md
    assert md.index("What held here") < md.index("## Claims")
    timing = json.loads((out / "step_seconds.json").read_text())
    part = cell.relative_to(out).as_posix()
    names = ("ppl_vs_dispersion", "layers", "sublayer_link", "layers_random_init", "knnlm_keys_ppl")
    assert sorted(timing) == sorted(f"{part}/{n}" for n in names)
    assert all(v >= 0 for v in timing.values()) and "## Wall time per step" in md
    # the floor beside each step: the extraction's plain forward went to the step that ran it
    floors = json.loads((out / "floor_seconds.json").read_text())
    assert sorted(floors) == sorted(timing)
    assert floors[f"{part}/ppl_vs_dispersion"] > 0  # it ran the main extraction (--only fig4)
    # the random-init model's pass and the kNN-LM windows are passes too: each has its floor
    ran = {k.rsplit("/", 1)[1] for k, v in floors.items() if v > 0}
    assert ran == {"ppl_vs_dispersion", "layers_random_init", "knnlm_keys_ppl"}
    for k, v in timing.items():
        f = floors[k]
        assert f"| {k} | {v:.1f} | {f:.1f} | {f'{v / f:.2f}x' if f > 0 else '-'} |" in md
    total, floor = sum(timing.values()), sum(floors.values())
    assert f"| all steps | {total:.1f} | {floor:.1f} | {total / floor:.2f}x |" in md
    assert f"Whole run: {total:.1f} s, {total / floor:.2f}x its floor." in md

    # rerun: every step skipped, no forward pass, the same rows
    import repdisp.core.extract as extract_mod

    def no_forward(*a, **k):
        raise AssertionError("a finished step ran a forward pass")

    monkeypatch.setattr(extract_mod, "_forward_batch", no_forward)
    capsys.readouterr()
    assert main(args) == 0
    said = capsys.readouterr().out
    for what in ("sub-layer link", "layers at random init", "kNN-LM perplexity per key"):
        assert f"{what}: done, skipped" in said
    assert json.loads((out / "claims.json").read_text())["claims"] == rows
    assert json.loads((out / "step_seconds.json").read_text()) == timing  # skipped: kept


def test_only_unknown_id_is_one_line(tiny_cfg, capsys):
    cfg, out = tiny_cfg
    assert main(["reproduce", "--config", str(cfg), "--out", str(out), "--only", "fig4,fig99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown claim id(s) fig99" in err[0] and "fig31" in err[0]


def test_cpu_scale_has_every_fig4_length():
    from repdisp.reproduce.config import load_config

    cfg = load_config("cpu", "configs/reproduce_cpu.yaml")
    assert cfg["contexts"] == [16, 64, 128, 256] == load_config("cpu")["contexts"]
    assert cfg["knnlm"]["datastore_tokens"] == 20000 and cfg["only"] is None
    assert cfg["knnlm"]["data"] == cfg["random_init"]["data"] == ["wiki"]
    assert load_config("cpu")["knnlm"]["datastore_tokens"] == 50000
    assert load_config("cpu", only=["fig4,fig31", "emergence"])["only"] == [
        "fig4", "fig31", "emergence"
    ]  # fmt: skip
    assert load_config("cpu", no_knn=True)["knnlm"] is None


def test_a_block_data_list_limits_its_step_and_rows_to_those_corpora(tiny_cfg, capsys):
    from repdisp.reproduce.config import load_config

    cfg, out = tiny_cfg
    text = cfg.read_text().replace("data: [python-docs]", "data: [python-docs, python-code]")
    text = text.replace("random_init: {seed: 0}", "random_init: {seed: 0, data: [python-code]}")
    text = text.replace("knnlm: {", "knnlm: {data: [python-docs], ")
    cfg.write_text(text + "context_passes: {data: [python-docs], segments: 12}\n")
    calls_args = ["reproduce", "--config", str(cfg), "--out", str(out), "--quiet"]
    assert main([*calls_args, "--only", "fig4,emergence,knnlm-ppl"]) == 0
    docs, code = next(out.glob("*/python-docs")), next(out.glob("*/python-code"))
    assert (docs / "knnlm_keys_ppl.json").exists() and not (code / "knnlm_keys_ppl.json").exists()
    assert (code / "layers_random_init.json").exists()
    assert not (docs / "layers_random_init.json").exists()
    doc = json.loads((out / "claims.json").read_text())
    assert doc["missing"] == []  # a corpus a block leaves out is not "not finished yet"
    scopes = [(r["id"], r["scope"].split(" · ")[1].split(",")[0]) for r in doc["claims"]]
    assert scopes == [
        ("fig4", "python-docs"), ("fig4", "python-docs"), ("fig4", "python-docs"),
        ("fig4", "python-code"), ("emergence", "python-code"), ("knnlm-ppl", "python-docs"),
    ]  # fmt: skip: by figure; the other lengths (8, 32) on python-docs only, with 12 segments
    ns = {r["claim"].rsplit("ctx ", 1)[1][:2]: r["scope"] for r in doc["claims"][:3]}
    assert "N=12" in ns["8)"] and "N=12" in ns["32"] and "N=40" in ns["16"]
    # --data on the command line: the user's corpora, every block on all of them
    over = load_config("cpu", cfg, overrides={"data": ["x.txt"]})
    assert over["knnlm"]["data"] is over["random_init"]["data"] is None
    # a name that is not a corpus of the run is a one-line error naming the known ones
    cfg.write_text(text.replace("data: [python-docs], ", "data: [wiki], "))
    capsys.readouterr()
    assert main(calls_args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "knnlm.data: wiki is not a corpus" in err[0]
    assert "python-code, python-docs" in err[0]
