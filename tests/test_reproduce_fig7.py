"""repdisp reproduce's Fig. 7 rows (reproduce.scratch_clusters): the statistics against a
brute-force float64 reference (loops over clusters, pairs and enumerated bootstrap multisets)
on planted vectors, the verdict rule on planted growing and shrinking effects, and the step on a
tiny from-scratch run through ``repdisp reproduce --only fig7-...``: its numbers against plain
transformers forwards of the kept checkpoints, step 0 equal to the seeded initialisation, the
marker skip on rerun, and the resume of a run killed with SIGKILL."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from repdisp.cli import main
from repdisp.core.bootstrap import bca_interval, bootstrap_weights
from repdisp.reproduce import scratch_clusters as sc
from repdisp.reproduce.scratch_stats import ScratchClusters, analyse, cluster_summary

ROOT = Path(__file__).resolve().parents[1]
IDS = ["fig7-within", "fig7-between", "fig7-loss"]


# ------------------------------------------------------------------ brute-force references


def cos_dist(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 - float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))


def brute_cluster(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[list[float], list]:
    """Per-cluster mean distance to the centroid and the centroids, by loops."""
    w, cents = [], []
    for g in range(k):
        members = [x[i] for i in range(len(x)) if labels[i] == g]
        c = sum(members) / len(members)
        w.append(sum(cos_dist(m, c) for m in members) / len(members))
        cents.append(c)
    return w, cents


def brute_between(cents: list, counts: np.ndarray | None = None) -> float:
    """Mean 1 - cos over pairs of draws whose originals differ (each original drawn counts[k]
    times; all ones: Eq. 1 over the centroids)."""
    idx = list(np.repeat(np.arange(len(cents)), counts if counts is not None else 1))
    pairs = [(a, b) for a, b in itertools.combinations(idx, 2) if a != b]
    return sum(cos_dist(cents[a], cents[b]) for a, b in pairs) / len(pairs)


def brute_mean(v: list[float], counts: np.ndarray | None = None) -> float:
    idx = list(np.repeat(np.arange(len(v)), counts if counts is not None else 1))
    return sum(v[i] for i in idx) / len(idx)


def planted(rng, steps=3, seeds=2, k=6, d=5, grow=1.0):
    """Vectors of k clusters of 3-6 members per (seed, step); spread around the centroid and
    spread of the centroid directions scaled by ``grow`` ** step; labels."""
    sizes = rng.integers(3, 7, k)
    labels = np.repeat(np.arange(k), sizes)
    base = rng.normal(size=(k, d))
    out = np.zeros((seeds, steps, len(labels), d))
    for s in range(seeds):
        for t in range(steps):
            f = grow**t
            mu = np.ones(d) * 3 + f * base
            out[s, t] = mu[labels] + 0.3 * f * rng.normal(size=(len(labels), d))
    return out, labels


def test_statistics_equal_a_brute_force_reference():
    rng = np.random.default_rng(3)
    steps, reps, seed = [0, 10, 40], 40, 7
    x, labels = planted(rng)
    k, b = int(labels.max()) + 1, 9
    nll = rng.normal(5.0, 0.4, size=(2, 3, b))
    w_np = np.zeros((2, 3, k))
    c_np = np.zeros((2, 3, k, x.shape[-1]))
    ref = {}
    for s, t in itertools.product(range(2), range(3)):
        w_np[s, t], c_np[s, t] = cluster_summary(x[s, t], labels, k)
        w, cents = brute_cluster(x[s, t], labels, k)
        np.testing.assert_allclose(w_np[s, t], w, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c_np[s, t], np.stack(cents), rtol=1e-12)
        ref[s, t] = (w, cents)
    rows, trends = analyse(steps, w_np, c_np, nll, reps, seed)
    crow = np.concatenate(list(bootstrap_weights(k, reps, seed)))
    brow = np.concatenate(list(bootstrap_weights(b, reps, seed + 1)))

    def stat(name, s, t, counts=None, drop=None):
        w, cents = ref[s, t]
        if name == "loss":
            v = list(nll[s, t])
            return brute_mean([u for i, u in enumerate(v) if i != drop], counts)
        keep = [i for i in range(k) if i != drop]
        if name == "within":
            return brute_mean([w[i] for i in keep], counts)
        return brute_between([cents[i] for i in keep], counts)

    def combined(name, weights, counts=None, drop=None):  # seed mean of Σ_t a_t S_t
        return sum(a * stat(name, s, t, counts, drop) for s in range(2) for t, a in weights) / 2

    for name in ("within", "between", "loss"):
        rowset, n = (brow, b) if name == "loss" else (crow, k)
        for t, r in enumerate(rows):
            assert r["step"] == steps[t]
            assert r[name] == pytest.approx(combined(name, [(t, 1.0)]), rel=1e-10)
        tr = next(tr for tr in trends if tr["stat"] == name)
        wts = [(0, -1.0), (2, 1.0)]
        est = combined(name, wts)
        rep = [combined(name, wts, c) for c in rowset]
        jack = [combined(name, wts, drop=i) for i in range(n)]
        lo, hi = bca_interval(est, rep, jack)
        assert tr["value"] == pytest.approx(est, rel=1e-10)
        assert (tr["ci_low"], tr["ci_high"]) == pytest.approx((lo, hi), rel=1e-9)
        assert tr["ci_low"] <= tr["value"] <= tr["ci_high"] and tr["n"] == n
        assert tr["method"].startswith(f"BCa {reps} bootstraps over")
        # the per-checkpoint interval: same resamples, one checkpoint
        e1 = combined(name, [(1, 1.0)])
        lo1, hi1 = bca_interval(
            e1,
            [combined(name, [(1, 1.0)], c) for c in rowset],
            [combined(name, [(1, 1.0)], drop=i) for i in range(n)],
        )
        assert (rows[1][f"{name}_ci_low"], rows[1][f"{name}_ci_high"]) == pytest.approx(
            (lo1, hi1), rel=1e-9
        )
        # after_init: from the first trained checkpoint (step 10) to the last
        a = tr["after_init"]
        assert a["value"] == pytest.approx(combined(name, [(1, -1.0), (2, 1.0)]), rel=1e-10)
        from scipy.stats import spearmanr

        assert tr["spearman"] == pytest.approx(spearmanr([r[name] for r in rows], steps)[0])
        assert tr["spearman_ci_low"] <= tr["spearman_ci_high"]


def test_bad_inputs_are_one_line_errors():
    from repdisp.core.errors import RepdispError

    w, c, nll = np.zeros((1, 2, 2)), np.ones((1, 2, 2, 3)), np.zeros((1, 2, 4))
    with pytest.raises(RepdispError, match="at least 3"):
        analyse([0, 5], w, c, nll, 10, 0)
    with pytest.raises(RepdispError, match="ascending"):
        analyse([5, 0], np.zeros((1, 2, 4)), np.ones((1, 2, 4, 3)), nll, 10, 0)
    for bad, msg in (
        ({"checkpoints": [0]}, "2\\+ ascending"),
        ({"checkpoints": [10, 5]}, "ascending"),
        ({"ngram": 0}, "fig7.ngram"),
        ({"bogus": 1}, "unknown key"),
        ({"seeds": []}, "fig7.seeds"),
    ):
        with pytest.raises(RepdispError, match=msg):
            sc.settings({"fig7": bad})


# ------------------------------------------------------------------ verdicts, planted effects


def doc_of(x, labels, nll, steps, reps=300) -> dict:
    k = int(labels.max()) + 1
    s_n, t_n = x.shape[:2]
    w = np.zeros((s_n, t_n, k))
    c = np.zeros((s_n, t_n, k, x.shape[-1]))
    for s, t in itertools.product(range(s_n), range(t_n)):
        w[s, t], c[s, t] = cluster_summary(x[s, t], labels, k)
    rows, trends = analyse(steps, w, c, nll, reps, 0)
    res = ScratchClusters(
        recipe="tiny", data="/x/wiki.txt", seeds=list(range(s_n)), steps=steps, n_params=10,
        site="final", ngram=3, min_count=4, context=8, per_cluster=6, clusters_asked=k,
        ngrams_found=k, clusters_used=k, contexts=len(labels), heldout_tokens=100,
        heldout_blocks=nll.shape[2], block_size=16, reps=reps, checkpoints=rows, trends=trends,
    )  # fmt: skip
    return res.to_dict()


@pytest.mark.parametrize(
    "grow, want",
    [(1.6, ("supported", "supported", "supported")),
     (1 / 1.6, ("contradicted", "contradicted", "contradicted"))],
)  # fmt: skip
def test_planted_effects_follow_the_verdict_rule_both_ways(grow, want):
    rng = np.random.default_rng(0)
    steps = [0, 10, 20]
    x, labels = planted(rng, steps=3, seeds=1, k=30, d=8, grow=grow)
    # loss falls when the distances grow, rises when they shrink
    nll = np.stack([rng.normal(5.0 - np.log(grow) * t, 0.1, 40) for t in range(3)])[None]
    rows = sc.rows_of({"device": "cpu"}, doc_of(x, labels, nll, steps))
    assert [r["id"] for r in rows] == IDS
    assert tuple(r["verdict"] for r in rows) == want
    for r in rows:
        assert r["figure"] == "Fig. 7" and r["claim"].startswith("§2.3 Fig. 7")
        assert r["command"] == (
            f"repdisp reproduce --config configs/reproduce_cpu.yaml --only {r['id']} --out DIR"
        )
        assert r["n_seeds"] == 1 and r["n_clusters"] == 30 and r["steps"] == steps
        assert "30 clusters of 3-gram contexts" in r["scope"] and "steps 0/10/20" in r["scope"]
        assert "1 seed (0)" in r["scope"] and "(BCa)" in r["result"]
        e = r["estimate"]
        assert e["ci_low"] <= e["value"] <= e["ci_high"]
    assert sc.rows_of({"device": "cuda"}, doc_of(x, labels, nll, steps))[0]["command"].startswith(
        "repdisp reproduce --config configs/reproduce_gpu.yaml"
    )


def test_no_effect_is_inconclusive():
    rng = np.random.default_rng(1)
    x, labels = planted(rng, steps=2, seeds=1, k=25, d=8, grow=1.0)
    nll = rng.normal(5.0, 0.5, size=(1, 2, 30))
    rows = sc.rows_of({"device": "cpu"}, doc_of(x, labels, nll, [0, 50]))
    assert [r["verdict"] for r in rows] == ["inconclusive at this N"] * 3
    assert "first trained checkpoint" not in rows[0]["result"]  # two checkpoints: no after_init


# ------------------------------------------------------------------ the step, on a tiny run


def write_cfg(tmp_path: Path, model: Path, steps=(0, 5, 10), save_every: int = 5) -> Path:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)] + ["the", "a", "of", "and"]
    phrases = ["the old man sat", "in the city of", "at the end of the"]
    lines = [" ".join(rng.choice(words, 12)) + f" {phrases[i % 3]} " + " ".join(rng.choice(words, 8))
             for i in range(500)]  # fmt: skip
    (tmp_path / "wiki.txt").write_text("\n".join(lines))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((ROOT / "configs" / "train_cpu.yaml").read_text())
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
fig7:
  recipe: {recipe}
  train:
    domains: [{{name: wikitext, train: {tmp_path / "wiki.txt"}, val_fraction: 0.05, test_fraction: 0.2}}]
    model: {{n_layer: 1, n_embd: 16, n_head: 2}}
    vocab_size: 300
    block_size: 16
    batch_size: 4
    eval_blocks: 8
    log_steps: 5
    warmup_steps: 2
  seeds: [0]
  checkpoints: {list(steps)}
  save_every: {save_every}
  ngram: 3
  min_count: 4
  clusters: 8
  per_cluster: 6
  context: 8
  reps: 50
"""
    )
    return cfg


@pytest.fixture
def ran(tiny_gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    cfg, out = write_cfg(tmp_path, tiny_gpt2_dir), tmp_path / "run"
    assert (
        main(["reproduce", "--config", str(cfg), "--out", str(out), "--only", "fig7-within"]) == 0
    )
    return cfg, out


def test_rows_equal_plain_forwards_of_the_kept_checkpoints(ran):
    import torch
    from transformers import AutoModelForCausalLM

    from repdisp.training.data import prepare_data
    from repdisp.training.run import build_model, evaluate_blocks

    cfg, out = ran
    top = out / "fig7"
    # --only fig7-within ran this step alone and shows only its row
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["fig7"]
    claims = json.loads((out / "claims.json").read_text())["claims"]
    assert [r["id"] for r in claims] == ["fig7-within"]
    # its floor: the plain training steps and evaluations of the runs, the checkpoints' passes
    assert json.loads((out / "floor_seconds.json").read_text())["fig7/scratch_clusters"] > 0
    res = json.loads((top / "scratch_clusters.json").read_text())
    arr = np.load(top / "scratch_clusters_arrays.npz")
    assert res["steps"] == [0, 5, 10] and list(arr["steps"]) == [0, 5, 10]
    ids, labels = arr["ids"], arr["labels"]
    k = res["clusters_used"]
    assert ids.shape == (res["contexts"], 8) and 2 <= k <= 8 and res["reps"] == 50
    block = sc.settings(json.loads((out / "config.json").read_text()))
    recipe = sc.recipe(block, 0)
    data = prepare_data(recipe)
    # every context is the 8 held-out tokens before an occurrence of its cluster's 3-gram
    from repdisp.core.tokenizer import token_stream

    stream = token_stream(data.tokenizer, sc.heldout_docs(recipe))
    grams = {}
    for i, s in enumerate(arr["starts"]):
        assert list(stream[s - 8 : s]) == list(ids[i])
        grams.setdefault(int(labels[i]), set()).add(tuple(stream[s : s + 3]))
    assert all(len(g) == 1 for g in grams.values()) and len(grams) == k
    texts = [r["ngram"] for r in res["clusters"]]
    assert [data.tokenizer.decode(list(next(iter(grams[c])))) for c in range(k)] == texts
    w_all, c_all, l_all = [], [], []
    for t in res["steps"]:
        path = top / "seed-0" / f"step-{t}"
        net = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
        if t == 0:  # step 0 is the seeded initialisation of the recipe
            init = build_model(recipe, data.tokenizer).state_dict()
            for name, v in net.state_dict().items():
                assert torch.equal(v, init[name]), name
        with torch.no_grad():
            h = net(torch.as_tensor(ids), output_hidden_states=True).hidden_states[-1][:, -1]
        w, cents = brute_cluster(h.double().numpy(), labels, k)
        np.testing.assert_allclose(arr["centroids"][0, len(w_all)], np.stack(cents), rtol=1e-4)
        w_all.append(np.mean(w))
        c_all.append(brute_between(cents))
        l_all.append(evaluate_blocks(net, data.test["wikitext"])["nll"])  # the training's loss
    got = res["checkpoints"]
    assert [r["within"] for r in got] == pytest.approx(w_all, rel=1e-4, abs=1e-6)
    assert [r["between"] for r in got] == pytest.approx(c_all, rel=1e-4, abs=1e-6)
    assert [r["loss"] for r in got] == pytest.approx(l_all, rel=1e-5)
    assert l_all[-1] < l_all[0]  # it trained
    row = claims[0]
    e = row["estimate"]
    assert e["value"] == pytest.approx(w_all[-1] - w_all[0], rel=1e-4, abs=1e-6)
    assert e["ci_low"] <= e["value"] <= e["ci_high"] and e["n"] == k
    assert row["steps"] == [0, 5, 10] and row["n_seeds"] == 1 and row["n_clusters"] == k
    from repdisp.io.results import load_result

    assert isinstance(load_result(top / "scratch_clusters.json"), ScratchClusters)
    assert (top / "scratch_clusters.png").exists()
    assert "Fig. 7" in (out / "findings.md").read_text()


def test_rerun_is_skipped_and_new_statistics_reuse_the_training(ran, monkeypatch, capsys):
    import repdisp.training.run as tr

    cfg, out = ran
    res = out / "fig7" / "scratch_clusters.json"
    mtime = res.stat().st_mtime_ns

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(tr, "run_train", no_training)
    capsys.readouterr()
    args = [
        "reproduce",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--only",
        "fig7-between,fig7-loss",
    ]
    assert main(args) == 0
    assert "[fig7] done, skipped" in capsys.readouterr().out and res.stat().st_mtime_ns == mtime
    rows = json.loads((out / "claims.json").read_text())["claims"]
    assert [r["id"] for r in rows] == ["fig7-between", "fig7-loss"]
    cfg.write_text(cfg.read_text().replace("reps: 50", "reps: 30"))  # the statistics rerun
    assert main(args) == 0
    assert json.loads(res.read_text())["reps"] == 30
    cfg.write_text(cfg.read_text().replace("warmup_steps: 2", "warmup_steps: 3"))  # a new recipe
    assert main(args) == 1
    assert "trained again" in capsys.readouterr().err


def test_cpu_and_gpu_configs_carry_the_block():
    from repdisp.reproduce.config import load_config

    cpu = sc.settings(load_config("cpu", ROOT / "configs/reproduce_cpu.yaml"))
    assert cpu["checkpoints"][0] == 0 and len(cpu["checkpoints"]) == 5
    c = sc.recipe(cpu, 0)
    assert c.max_steps == cpu["checkpoints"][-1] and c.block_size >= cpu["context"]
    assert cpu["save_every"] % c.log_steps == 0
    gpu = sc.settings(load_config("gpu", ROOT / "configs/reproduce_gpu.yaml"))
    g = sc.recipe(gpu, 0)
    assert gpu["ngram"] == 10 and g.model["n_layer"] == 12 and g.batch_size == 64
    assert gpu["save_every"] % g.log_steps == 0
    assert load_config("cpu")["fig7"] is None  # off unless a config file gives it


CHILD = """
import sys
from repdisp.cli import main
sys.exit(main(["reproduce", "--config", sys.argv[1], "--out", sys.argv[2], "--only", "fig7-loss"]))
"""


def test_a_run_killed_partway_resumes_to_the_uninterrupted_result(
    tiny_gpt2_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    cfg = write_cfg(tmp_path, tiny_gpt2_dir, steps=(0, 10, 40), save_every=5)
    out = tmp_path / "killed"
    env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "REPDISP_HOME": str(tmp_path / "home")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg), str(out)], env=env)
    work = out / "fig7" / "seed-0"
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:  # kill after a checkpoint past 10
        done = [p for p in work.glob(".checkpoints/checkpoint-*/trainer_state.json")]
        if any(int(p.parent.name.split("-")[1]) > 10 for p in done):
            break
        time.sleep(0.02)
    assert child.poll() is None, "the training ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (work / "train.json").exists() and not (work / "step-40").exists()
    assert (work / "step-0").is_dir() and (work / "step-10").is_dir()
    args = ["--config", str(cfg), "--only", "fig7-loss"]
    assert main(["reproduce", *args, "--out", str(out)]) == 0  # resumes from the checkpoint
    assert main(["reproduce", *args, "--out", str(tmp_path / "clean")]) == 0
    got = np.load(out / "fig7" / "scratch_clusters_arrays.npz")
    want = np.load(tmp_path / "clean" / "fig7" / "scratch_clusters_arrays.npz")
    for key in ("within", "centroids", "nll"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
    hist = json.loads((work / "train.json").read_text())["history"]
    assert [h["step"] for h in hist] == list(range(5, 41, 5))  # every log, across the kill
