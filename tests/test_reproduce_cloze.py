"""repdisp reproduce's Fig. 8 cloze row (reproduce.cloze): the query rule and the correctness
rule on hand-made examples, the mixtures' dispersion against brute-force float64 pdist, the
per-seed Spearman against scipy, the verdict on planted effects both ways, and the row through
``repdisp reproduce --only fig8-cloze`` on the tiny GPT-2 (numbers recomputed from the saved
queries, marker skip on rerun, the scored queries reused when only the statistics change)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

from repdisp.cli import main
from repdisp.core.errors import RepdispError
from repdisp.reproduce import cloze
from repdisp.reproduce import cloze_result as cr


def brute(x: np.ndarray) -> float:
    return float(pdist(np.asarray(x, dtype=np.float64), "cosine").mean())


def multiset_brute(x: np.ndarray, idx: np.ndarray) -> float:
    """Mean 1 - cos over pairs of draws whose originals differ, by enumeration."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    g = u[idx] @ u[idx].T
    keep = idx[:, None] != idx[None, :]
    return float((1.0 - g)[keep].mean())


# ----------------------------------------------------------------------------- the queries


def test_queries_are_whole_alphabetic_words_after_fixed_contexts():
    docs = [" = Title = \n a b c , d e 1990 f \n\nalpha beta gamma\n"]
    got = cr.make_queries(docs, 5, 2, seed=0)
    assert got == [("a b", "c"), ("c ,", "d"), (", d", "e"), ("e 1990", "f"),
                   ("alpha beta", "gamma")]  # fmt: skip
    assert sorted(cr.make_queries(docs, 3, 2, seed=1)) != sorted(cr.make_queries(docs, 3, 2, 2))
    with pytest.raises(RepdispError, match="holds 5 cloze positions"):
        cr.make_queries(docs, 6, 2, seed=0)
    with pytest.raises(RepdispError, match="must be >= 1"):
        cr.make_queries(docs, 1, 0, seed=0)


def test_correctness_rule_on_a_hand_made_model(tiny_gpt2):
    """A copy of the tiny GPT-2 whose output row for the first token T of " statement" is set
    to 50 h/|h|² (h: the final hidden state after the context), so its top-1 there is T."""
    import torch

    from repdisp.core.models import LoadedModel

    tok = tiny_gpt2.tokenizer
    ctx = "The assert"
    t = tok(" statement").input_ids[0]  # by hand: " statement" is a pre-token of its own
    ids = tok(ctx).input_ids
    assert t not in ids  # the tied input row of T is not read
    net = copy.deepcopy(tiny_gpt2.model)
    with torch.no_grad():
        h = net(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        net.get_output_embeddings().weight[t] = 50 * h / (h @ h)
    lm = LoadedModel(net, tok, "planted", "planted:0", torch.device("cpu"), torch.float32)
    got = cr.score_cloze(lm, [(ctx, "statement"), (ctx, "Assert"), ("import the", "statement")])
    assert got["target"][0] == t == got["target"][2] and got["target"][1] != t
    assert got["top1"][0] == t == got["top1"][1]
    assert got["correct"].tolist()[:2] == [True, False]
    with torch.no_grad():  # the query vector: the final hidden state of the last context token
        logits = net(torch.tensor([tok("import the").input_ids])).logits[0, -1]
    assert got["top1"][2] == int(logits.argmax()) and got["correct"][2] == (logits.argmax() == t)
    np.testing.assert_allclose(got["embeddings"][0], h.numpy(), rtol=1e-5, atol=1e-6)
    whole = tok(ctx + " statement").input_ids
    assert got["n_word_tokens"][0] == len(whole) - len(ids)
    with torch.no_grad():  # log p(word | context) over all of its tokens
        lp = torch.log_softmax(net(torch.tensor([whole])).logits[0], -1)
    want = sum(float(lp[i - 1, whole[i]]) for i in range(len(ids), len(whole)))
    assert got["loglik"][0] == pytest.approx(want, abs=1e-4)


# --------------------------------------------------------------------------- the statistics


def test_mixture_dispersion_equals_brute_force_and_the_probe():
    from repdisp.applications.accuracy_probe import run_protocol, sample_mix
    from repdisp.core.geometry import unit_rows

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)) + 0.5
    correct = np.arange(60) % 3 == 0  # 20 correct, 40 incorrect
    c, i = np.flatnonzero(correct), np.flatnonzero(~correct)
    D = cr.mixture_D(unit_rows(x), c, i, 20, 3)
    assert D.shape == (11, 3)
    for li, lv in enumerate(cr.LEVELS):
        for s in range(3):
            idx = sample_mix(c, i, lv, 20, s)
            assert len(set(idx)) == 20 and correct[idx].sum() == round(20 * lv)
            assert D[li, s] == pytest.approx(brute(x[idx]), abs=1e-12)
    levels, used, _ = run_protocol(x, correct, cr.LEVELS, 20, 3)
    assert used == 20
    np.testing.assert_allclose(D, np.array([lv.values for lv in levels]), atol=1e-12)
    # a bootstrap pool repeats queries: copies of one query are never paired
    cs = rng.choice(c, len(c))
    Db = cr.mixture_D(unit_rows(x), cs, i, 20, 2)
    idx = sample_mix(cs, i, 1.0, 20, 1)
    assert len(set(idx)) < 20  # the check below covers repeats
    assert Db[-1, 1] == pytest.approx(multiset_brute(x, idx), abs=1e-12)


def test_trend_is_the_seed_mean_of_scipy_spearman_and_the_end_slope():
    D = np.random.default_rng(1).normal(size=(11, 4))
    t = cr.trend(D)
    rho = [spearmanr(cr.LEVELS, D[:, s]).statistic for s in range(4)]
    np.testing.assert_allclose(t["rho_seeds"], rho, atol=1e-12)
    assert t["rho"] == pytest.approx(np.mean(rho)) and t["slope"] == pytest.approx(
        np.mean(D[-1] - D[0])
    )


def planted(wide_correct: bool | None, n: int = 120, seed: int = 0):
    """Pool vectors where the correct queries are more (True), less (False) or equally (None)
    dispersed than the incorrect ones."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=16)
    correct = np.arange(n) % 2 == 0
    spread = np.where(correct, 1.5, 0.5) if wide_correct else np.where(correct, 0.5, 1.5)
    if wide_correct is None:
        spread = np.ones(n)
    x = centre + spread[:, None] * rng.normal(size=(n, 16))
    from repdisp.core.geometry import unit_rows

    return unit_rows(x), correct


def doc_of(ci: dict, acc: float = 0.4, guess: float = 0.05) -> dict:
    return {"model": "m", "data": "wiki.test.raw", "n_queries": 120, "context_words": 24,
            "vocab": 512, "n_correct": int(120 * acc), "acc": acc,
            "acc_ci": list(cr.wilson(int(120 * acc), 120)),
            "constant_guess": {"token": " the", "rate": guess}, "sample": 30, "seeds": 4,
            "levels": [{"mean": 0.5}, {"mean": 0.6}], "rho": ci["rho"], "slope": ci["slope"],
            "remarks": []}  # fmt: skip


@pytest.mark.parametrize(
    "wide, want", [(True, "supported"), (False, "contradicted"), (None, "inconclusive at this N")]
)
def test_planted_effects_follow_the_verdict_rule(wide, want):
    u, correct = planted(wide)
    ci = cr.trend_ci(u, correct, 30, 4, 150, seed=0)
    for k in ("rho", "slope"):
        assert ci[k]["ci_low"] <= ci[k]["value"] <= ci[k]["ci_high"]
        assert ci[k]["method"].startswith("BCa 150 bootstraps over pool queries (stratified")
    if wide is not None:
        sign = 1 if wide else -1
        assert sign * ci["rho"]["value"] > 0.8 and sign * ci["slope"]["value"] > 0
    row = cloze.row_of({"device": "cpu"}, doc_of(ci))
    assert row["verdict"] == want and row["id"] == "fig8-cloze" and row["figure"] == "Fig. 8"
    assert "clearly above chance" in row["result"] and "N=30 queries" in row["scope"]
    weak = cloze.row_of({"device": "cpu"}, doc_of(ci, acc=0.05, guess=0.06))
    assert weak["verdict"] == want + " (model too weak to test)"
    assert "too weak to test" in weak["result"]


def test_row_verdict_needs_both_statistics():
    up, down = {"ci_low": 0.1, "ci_high": 0.2}, {"ci_low": -0.2, "ci_high": -0.1}
    nan = {"ci_low": float("nan"), "ci_high": float("nan")}
    assert cloze.row_verdict(up, up) == "supported"
    assert cloze.row_verdict(down, down) == "contradicted"
    assert cloze.row_verdict(up, down) == "inconclusive at this N"
    assert cloze.row_verdict(up, nan) == "inconclusive (no CI)"


def test_bad_settings_are_one_line_errors():
    cfg = {"data": ["python-docs"], "models": ["m"]}
    with pytest.raises(RepdispError, match="unknown key"):
        cloze.settings(cfg | {"cloze": {"querys": 3}})
    with pytest.raises(RepdispError, match="cloze.sample must be a positive integer"):
        cloze.settings(cfg | {"cloze": {"sample": 0}})
    assert cloze.settings(cfg | {"cloze": {"queries": 3}})["data"] == "python-docs"


# ------------------------------------------------------------------------------ the command


def write_cfg(tmp_path: Path, model: Path, reps: int = 40) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        f"""
models: ["{model}"]
data: [python-docs]
segments: 20
seq_len: 16
dtype: float32
device: cpu
batch_size: 8
seed: 0
cloze: {{data: python-docs, queries: 80, context_words: 6, sample: 12, seeds: 3, reps: {reps}}}
"""
    )
    return cfg


@pytest.fixture
def ran(tiny_gpt2_dir, tmp_path, monkeypatch):
    """One run of the row on the tiny model, with half the queries planted correct (a random
    model gets none right); (config, run folder, the result's folder)."""
    real = cr.score_cloze

    def half_right(*a, **k):
        got = real(*a, **k)
        got["correct"] = np.arange(len(got["correct"])) % 2 == 0
        return got

    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cr, "score_cloze", half_right)
    cfg, out = write_cfg(tmp_path, tiny_gpt2_dir), tmp_path / "run"
    assert main(["reproduce", "--config", str(cfg), "--out", str(out), "--only", "fig8-cloze"]) == 0
    return cfg, out, out / Path(str(tiny_gpt2_dir)).name / "cloze-python-docs"


def test_row_equals_a_recomputation_from_the_saved_queries(ran):
    from repdisp.applications.accuracy_probe import sample_mix

    cfg, out, top = ran
    res = json.loads((top / "cloze.json").read_text())
    z = np.load(top / "cloze_queries.npz")
    assert len(z["word"]) == res["n_queries"] == 80 and res["n_correct"] == 40
    assert all(cr.WORD.fullmatch(w) for w in z["word"])
    assert all(len(c.split()) == 6 for c in z["context"])
    # the scoring pass has its floor (the packed prompts' plain forward); the statistics none
    floors = json.loads((out / "floor_seconds.json").read_text())
    part = top.relative_to(out).as_posix()
    assert floors[f"{part}/cloze_queries"] > 0 and floors[f"{part}/cloze"] == 0
    assert (z["packed_tokens"] >= 1).all() and len(z["packed_tokens"]) == 80
    c, i = np.flatnonzero(z["correct"]), np.flatnonzero(~z["correct"])
    for lv in res["levels"]:
        vals = [brute(z["embeddings"][sample_mix(c, i, lv["level"], 12, s)]) for s in range(3)]
        assert lv["mean"] == pytest.approx(np.mean(vals), abs=1e-9)
        assert lv["n_correct"] == round(12 * lv["level"])
    D = np.array([[brute(z["embeddings"][sample_mix(c, i, lv, 12, s)]) for s in range(3)]
                  for lv in cr.LEVELS])  # fmt: skip
    rho = np.mean([spearmanr(cr.LEVELS, D[:, s]).statistic for s in range(3)])
    assert res["rho"]["value"] == pytest.approx(rho, abs=1e-9)
    assert res["slope"]["value"] == pytest.approx(np.mean(D[-1] - D[0]), abs=1e-9)
    assert res["acc"] == 0.5 and res["acc_ci"][0] < 0.5 < res["acc_ci"][1]
    rows = json.loads((out / "claims.json").read_text())["claims"]
    assert [r["id"] for r in rows] == ["fig8-cloze"]
    row = rows[0]
    assert row["verdict"] == cloze.row_verdict(res["rho"], res["slope"])
    assert row["command"] == (
        "repdisp reproduce --config configs/reproduce_cpu.yaml --only fig8-cloze --out DIR"
    )
    assert "N=12 queries at 11 fractions (0-100%) x 3 seeds" in row["scope"]
    assert row["n_seeds"] == 3 and "cloze acc 0.500" in row["result"]
    assert "fig8-cloze" in (out / "findings.md").read_text()


def test_rerun_skips_and_new_statistics_reuse_the_scored_queries(ran, monkeypatch, capsys):
    cfg, out, top = ran
    mtime = (top / "cloze.json").stat().st_mtime_ns

    def no_scoring(*a, **k):
        raise AssertionError("scored again")

    monkeypatch.setattr(cr, "score_cloze", no_scoring)
    args = ["reproduce", "--config", str(cfg), "--out", str(out), "--only", "fig8-cloze"]
    capsys.readouterr()
    assert main(args) == 0
    assert "done, skipped" in capsys.readouterr().out
    assert (top / "cloze.json").stat().st_mtime_ns == mtime
    cfg.write_text(cfg.read_text().replace("reps: 40", "reps: 30"))  # statistics only
    assert main(args) == 0
    res = json.loads((top / "cloze.json").read_text())
    assert "done, skipped" not in capsys.readouterr().out and res["n_correct"] == 40
    cfg.write_text(cfg.read_text().replace("queries: 80", "queries: 70"))  # new queries
    assert main(args) == 1
    assert "scored again" in capsys.readouterr().err


def test_a_model_at_chance_gets_no_test_and_a_bad_block_exits_2(tiny_gpt2_dir, tmp_path, capsys):
    cfg, out = write_cfg(tmp_path, tiny_gpt2_dir), tmp_path / "run"
    args = ["reproduce", "--config", str(cfg), "--out", str(out), "--only", "fig8-cloze"]
    assert main(args) == 0  # the random tiny model: (almost) nothing right
    (row,) = json.loads((out / "claims.json").read_text())["claims"]
    res = json.loads(next(out.glob("*/cloze-python-docs/cloze.json")).read_text())
    assert res["n_correct"] < 12 and res["levels"] == []
    assert row["verdict"].startswith("inconclusive (no CI)") and "no mixtures" in row["result"]
    cfg.write_text(cfg.read_text().replace("reps: 40", "repz: 40"))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cloze: unknown key(s) ['repz']" in err[0]


def test_a_killed_scoring_pass_resumes_at_its_first_missing_part(
    tiny_gpt2_dir, tmp_path, monkeypatch
):
    """Parts of 30 queries: a run killed while scoring the second part rescores only the
    parts after the first, and its queries equal those of an uninterrupted run."""
    monkeypatch.setattr(cloze, "PART", 30)
    real, calls = cr.score_cloze, []

    def counted(lm, chunk, *a, **k):
        calls.append(len(chunk))
        if fail and len(calls) == 2:
            raise KeyboardInterrupt  # killed while scoring the second part
        return real(lm, chunk, *a, **k)

    monkeypatch.setattr(cr, "score_cloze", counted)
    cfg = write_cfg(tmp_path, tiny_gpt2_dir)
    run = ["reproduce", "--config", str(cfg), "--only", "fig8-cloze", "--out"]
    fail = False
    assert main([*run, str(tmp_path / "whole")]) == 0 and calls == [30, 30, 20]
    fail, calls = True, []
    assert main([*run, str(tmp_path / "cut")]) == 130  # the CLI's exit code for Ctrl-C
    (top,) = (tmp_path / "cut").glob("*/cloze-python-docs")
    assert [p.name for p in top.glob("cloze_part*.npz")] == ["cloze_part0.npz"]
    fail, calls = False, []
    assert main([*run, str(tmp_path / "cut")]) == 0 and calls == [30, 20]
    assert not list(top.glob("cloze_part*"))  # gathered into cloze_queries.npz
    (whole,) = (tmp_path / "whole").glob("*/cloze-python-docs")
    a, b = np.load(whole / "cloze_queries.npz"), np.load(top / "cloze_queries.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])


def test_the_shipped_configs_give_valid_cloze_blocks():
    from repdisp.reproduce.config import load_config

    root = Path(__file__).resolve().parents[1]
    cpu = cloze.settings(load_config("cpu", root / "configs/reproduce_cpu.yaml"))
    gpu = cloze.settings(load_config("gpu", root / "configs/reproduce_gpu.yaml"))
    assert (cpu["queries"], cpu["context_words"], cpu["sample"], cpu["seeds"]) == (
        1000,
        24,
        100,
        10,
    )
    assert (gpu["queries"], gpu["sample"], gpu["seeds"]) == (4000, 100, 10)
    assert cpu["data"].endswith("wikitext-2-raw/wiki.test.raw") and gpu["data"] == cpu["data"]
    assert load_config("cpu")["cloze"] is None  # off unless a config file gives the block
