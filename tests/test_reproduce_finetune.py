"""repdisp reproduce's Fig. 6 rows (reproduce.finetune_shift): LoRA and full fine-tunes of the
tiny random GPT-2 through ``repdisp reproduce --only fig6...``, the rows' numbers against an
independent recomputation (plain transformers forward passes, brute-force float64 dispersion, a
brute-force paired bootstrap through ``core.bootstrap.bca_interval``), the marker skip on rerun,
the resume of a fine-tune killed with SIGKILL, and the verdict rule on planted effects."""

from __future__ import annotations

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
from repdisp.reproduce import finetune_shift as fs
from repdisp.reproduce.finetune_result import FinetuneShift
from repdisp.reproduce.verdict import verdict

ROOT = Path(__file__).resolve().parents[1]
IDS = ["fig6-lora", "fig6-full", "fig6-full-vs-lora"]
REPS = 60


def write_cfg(tmp_path: Path, model: Path, steps: int = 4, save_every: int = 2) -> Path:
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
finetune:
  data: python-docs
  train_fraction: 0.8
  seeds: [0]
  segments: 24
  reps: {REPS}
  recipe: {{steps: {steps}, batch_size: 2, seq_len: 16, save_every: {save_every}}}
  lora: {{learning_rate: 1.0e-2, lora_r: 4, lora_alpha: 8}}
  full: {{learning_rate: 1.0e-3}}
"""
    )
    return cfg


@pytest.fixture
def ran(tiny_gpt2_dir, tmp_path, monkeypatch):
    """One run of the three rows on the tiny model; (config, run folder, stdout)."""
    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    cfg, out = write_cfg(tmp_path, tiny_gpt2_dir), tmp_path / "run"
    assert (
        main(["reproduce", "--config", str(cfg), "--out", str(out), "--only", ",".join(IDS)]) == 0
    )
    return cfg, out


def brute_dispersion(x: np.ndarray) -> float:
    from scipy.spatial.distance import pdist

    return float(pdist(np.asarray(x, dtype=np.float64), "cosine").mean())


def multiset_dispersion(x: np.ndarray, counts: np.ndarray) -> float:
    """Mean 1 - cos over pairs of distinct draws of a resample, copies of one segment never
    paired with each other (the project's multiset convention), by enumeration."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    idx = np.repeat(np.arange(len(x)), counts)
    g = u[idx] @ u[idx].T
    keep = idx[:, None] != idx[None, :]
    return float((1.0 - g)[keep].mean())


def hidden_last(folder: Path, ids: np.ndarray) -> np.ndarray:
    """Last-token final hidden state (after the final norm) by a plain transformers forward."""
    import torch
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        h = net(torch.as_tensor(ids), output_hidden_states=True).hidden_states[-1]
    return h[:, -1, :].double().numpy()


def test_rows_equal_an_independent_recomputation(ran, tiny_gpt2_dir):
    from repdisp.core.bootstrap import bca_interval, bootstrap_weights

    cfg, out = ran
    top = out / "finetune" / Path(str(tiny_gpt2_dir)).name
    res = json.loads((top / "finetune_shift.json").read_text())
    # its floor: the fine-tunes' plain optimiser steps and the evaluation passes
    floors = json.loads((out / "floor_seconds.json").read_text())
    assert floors[f"finetune/{top.name}/finetune_shift"] > 0
    vec = np.load(top / "finetune_shift_vectors.npz")
    ids = vec["ids"]
    assert ids.shape == (res["n_segments"], 16) and res["n_segments"] == 24
    # held-out and training documents are disjoint (python-docs topics are distinct texts)
    assert res["overlap_docs"] == 0 and res["train_docs"] > 0 and res["heldout_docs"] > 0
    folders = {"base": tiny_gpt2_dir, "lora": top / "lora-s0", "full": top / "full-s0"}
    x = {k: hidden_last(f, ids) for k, f in folders.items()}
    for k, key in (("base", "base"), ("lora", "lora-s0"), ("full", "full-s0")):
        np.testing.assert_allclose(vec[key], x[k], rtol=1e-4, atol=1e-5)
    # fine-tuning changed the weights: the models' vectors differ
    assert not np.allclose(x["base"], x["lora"], atol=1e-4)
    assert not np.allclose(x["base"], x["full"], atol=1e-4)
    d = {k: brute_dispersion(v) for k, v in x.items()}
    by_name = {r["model"]: r for r in res["models"]}
    for k, key in (("base", "base"), ("lora", "lora-s0"), ("full", "full-s0")):
        assert by_name[key]["dispersion"] == pytest.approx(d[k], abs=1e-6)
    rows = {r["id"]: r for r in json.loads((out / "claims.json").read_text())["claims"]}
    assert sorted(rows) == sorted(IDS)
    n = len(ids)
    weights = np.concatenate(list(bootstrap_weights(n, REPS, 0)))
    for cid, a, b in (("fig6-lora", "lora", "base"), ("fig6-full", "full", "base"),
                      ("fig6-full-vs-lora", "full", "lora")):  # fmt: skip
        e = rows[cid]["estimate"]
        assert e["value"] == pytest.approx(d[a] - d[b], abs=1e-6)
        # the paired bootstrap by hand: the same resample for both models, every replicate
        # enumerated; the jackknife by deleting each segment and recomputing by brute force
        reps = [multiset_dispersion(x[a], w) - multiset_dispersion(x[b], w) for w in weights]
        keep = [np.delete(np.arange(n), i) for i in range(n)]
        jack = [brute_dispersion(x[a][k]) - brute_dispersion(x[b][k]) for k in keep]
        lo, hi = bca_interval(d[a] - d[b], reps, jack)
        assert (e["ci_low"], e["ci_high"]) == pytest.approx((lo, hi), abs=1e-6)
        assert e["ci_low"] <= e["value"] <= e["ci_high"]
        assert e["method"].startswith("BCa 60 bootstraps over held-out segments (paired)")
        assert rows[cid]["verdict"] == verdict(e["ci_low"], e["ci_high"], +1)
        assert rows[cid]["figure"] == "Fig. 6" and rows[cid]["claim"].startswith("§2.2(3) Fig. 6")
        assert rows[cid]["command"] == (
            f"repdisp reproduce --config configs/reproduce_cpu.yaml --only {cid} --out DIR"
        )
        scope = rows[cid]["scope"]
        assert "N=24 segments x 16 tokens" in scope and "4 steps" in scope
        assert "1 seed (0)" in scope and "disjoint" in scope and rows[cid]["n_seeds"] == 1
    # the fine-tunes ran with the block's recipe and lowered their training loss
    tunes = {t["method"]: t for t in res["finetunes"]}
    assert tunes["lora"]["learning_rate"] == 1e-2 and tunes["lora"]["lora_r"] == 4
    assert tunes["full"]["learning_rate"] == 1e-3 and tunes["full"]["steps"] == 4
    assert tunes["full"]["trainable_params"] > tunes["lora"]["trainable_params"]
    assert len(res["run"]["finetune_seconds"]) == 2
    from repdisp.io.results import load_result

    back = load_result(top / "finetune_shift.json")
    assert isinstance(back, FinetuneShift) and back.contrasts == res["contrasts"]


def test_rerun_is_skipped_and_a_new_evaluation_reuses_the_fine_tunes(ran, monkeypatch, capsys):
    import repdisp.training.finetune as ft

    cfg, out = ran
    top = next((out / "finetune").iterdir())
    mtime = (top / "finetune_shift.json").stat().st_mtime_ns

    def no_training(*a, **k):
        raise AssertionError("a finished fine-tune was trained again")

    monkeypatch.setattr(ft, "finetune", no_training)
    capsys.readouterr()
    args = ["reproduce", "--config", str(cfg), "--out", str(out), "--only", "fig6-full"]
    assert main(args) == 0
    assert "done, skipped" in capsys.readouterr().out
    assert (top / "finetune_shift.json").stat().st_mtime_ns == mtime
    rows = json.loads((out / "claims.json").read_text())["claims"]
    assert [r["id"] for r in rows] == ["fig6-full"]
    # another evaluation size: the step reruns its evaluation, the fine-tunes are reused
    cfg.write_text(cfg.read_text().replace("segments: 24", "segments: 12"))
    assert main(args) == 0
    res = json.loads((top / "finetune_shift.json").read_text())
    assert res["n_segments"] == 12 and "done, skipped" not in capsys.readouterr().out
    # another recipe: the marker no longer matches, so it would train (here: refused)
    cfg.write_text(cfg.read_text().replace("steps: 4", "steps: 5"))
    assert main(args) == 1
    assert "trained again" in capsys.readouterr().err


def test_planted_contrasts_follow_the_verdict_rule():
    rng = np.random.default_rng(0)
    n, dim = 40, 8
    centre = rng.normal(size=dim)
    tight = centre + 0.2 * rng.normal(size=(n, dim))  # low dispersion
    wide = centre + 3.0 * rng.normal(size=(n, dim))  # high dispersion
    u = {k: fs.units_of(v) for k, v in (("tight", tight), ("wide", wide))}
    up = fs.paired_difference([(u["wide"], u["tight"])], 200, 0)
    down = fs.paired_difference([(u["tight"], u["wide"])], 200, 0)
    same = fs.paired_difference([(u["wide"], u["wide"])], 200, 0)
    assert up["value"] == pytest.approx(brute_dispersion(wide) - brute_dispersion(tight))
    assert up["value"] == pytest.approx(-down["value"])
    assert up["ci_low"] > 0 and down["ci_high"] < 0
    doc = {
        "model": "m", "data": "python-code", "n_segments": n, "seq_len": 16, "seeds": [0],
        "train_docs": 9, "heldout_docs": 3, "overlap_docs": 0,
        "models": [{"model": k, "seed": 0, "dispersion": 0.5, "token_ppl": 9.0}
                   for k in ("base", "lora-s0", "full-s0")],
        "finetunes": [{"method": m, "seed": 0, "steps": 7, "learning_rate": 1e-4}
                      for m in ("lora", "full")],
        "contrasts": [{"id": cid, "a": a, "b": b} | e
                      for (cid, a, b, _), e in zip(fs.CONTRASTS, (up, down, same), strict=True)],
    }  # fmt: skip
    rows = fs.rows_of({"device": "cpu"}, doc)
    assert [r["verdict"] for r in rows] == [
        "supported", "contradicted", "inconclusive at this N"
    ]  # fmt: skip
    assert same["value"] == 0 and same["ci_low"] == same["ci_high"] == 0
    assert "7 steps" in rows[0]["scope"] and "lora lr 0.0001" in rows[0]["scope"]
    assert rows[0]["command"].endswith("--only fig6-lora --out DIR")
    # two seeds: the estimate is the seed-mean of the paired differences, one resample for all
    two = fs.paired_difference([(u["wide"], u["tight"]), (u["tight"], u["tight"])], 200, 0)
    assert two["value"] == pytest.approx(up["value"] / 2)
    assert two["ci_low"] == pytest.approx(up["ci_low"] / 2)


def test_bad_blocks_are_one_line_errors(tmp_path, capsys):
    from repdisp.core.errors import RepdispError

    with pytest.raises(RepdispError, match="unknown key"):
        fs.settings({"finetune": {"step": 3}})
    with pytest.raises(RepdispError, match="no training or no held-out"):
        fs.heldout_split(["one document only"], 1.0)
    with pytest.raises(RepdispError, match="--method|unexpected"):
        fs.recipe(fs.settings({"finetune": {"recipe": {"nope": 1}}}), "lora", 0)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("models: [m]\ndata: [python-docs]\nfinetune: {step: 3}\n")
    assert main(["reproduce", "--config", str(cfg), "--out", str(tmp_path / "o"),
                 "--only", "fig6-lora"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finetune: unknown key" in err[0]


def test_cpu_and_gpu_configs_carry_the_block():
    from repdisp.reproduce.config import load_config

    cpu = fs.settings(load_config("cpu", ROOT / "configs/reproduce_cpu.yaml"))
    assert cpu["models"] == ["smollm2-135m"] and cpu["data"].endswith(
        "pubmedqa_abstracts_1000.jsonl"
    )
    assert fs.recipe(cpu, "lora", 0).steps == 200 and fs.recipe(cpu, "full", 0).method == "full"
    gpu = fs.settings(load_config("gpu", ROOT / "configs/reproduce_gpu.yaml"))
    lora, full = fs.recipe(gpu, "lora", 0), fs.recipe(gpu, "full", 0)
    assert (lora.lora_r, lora.lora_alpha, lora.learning_rate) == (8, 16, 1e-4)
    assert full.learning_rate == 1e-5 and gpu["seeds"] == [0, 1, 2]
    assert load_config("cpu")["finetune"] is None  # off unless a config file gives it


CHILD = """
import sys
from repdisp.cli import main
sys.exit(main(["reproduce", "--config", sys.argv[1], "--out", sys.argv[2], "--only", "fig6-lora"]))
"""


def test_a_fine_tune_killed_partway_resumes_to_the_uninterrupted_result(
    tiny_gpt2_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    cfg = write_cfg(tmp_path, tiny_gpt2_dir, steps=30, save_every=5)
    out = tmp_path / "killed"
    env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "REPDISP_HOME": str(tmp_path / "home")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg), str(out)], env=env)
    work = out / "finetune" / Path(str(tiny_gpt2_dir)).name / ".lora-s0.partial"
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:  # kill after the first checkpoint
        if any(work.glob("checkpoint-*/trainer_state.json")):
            break
        time.sleep(0.02)
    assert child.poll() is None, "the fine-tune ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    top = out / "finetune" / Path(str(tiny_gpt2_dir)).name
    assert not (top / "finetune_shift.json").exists() and not (top / "lora-s0").exists()
    args = ["--config", str(cfg), "--only", "fig6-lora"]
    assert main(["reproduce", *args, "--out", str(out)]) == 0  # resumes from the checkpoint
    assert main(["reproduce", *args, "--out", str(tmp_path / "clean")]) == 0
    got = np.load(top / "finetune_shift_vectors.npz")
    want = np.load(tmp_path / "clean" / "finetune" / top.name / "finetune_shift_vectors.npz")
    for key in ("base", "lora-s0", "full-s0"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
    loss = json.loads((top / "lora-s0" / "finetune.json").read_text())["loss"]
    assert [r["step"] for r in loss] == list(range(1, 31))  # the resumed run logged every step
