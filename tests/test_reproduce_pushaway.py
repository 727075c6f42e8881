"""repdisp reproduce's Table 2 rows (reproduce.pushaway): the paired-seed claim on planted
differences, and the training step's skip on rerun and resume after SIGKILL, on tiny sizes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from repdisp.reproduce import pushaway
from repdisp.reproduce.steps import Run

ROOT = Path(__file__).resolve().parents[1]


def doc(base: list[float], aux: list[float]) -> dict:
    row = {"domain": "wikitext", "lr": 0.003, "step": 20, "aux_weight": 0.1}
    row |= {"base_values": base, "aux_values": aux}
    return {"config": "tiny", "table2": [row], "run": {"seeds": [0, 1, 2], "max_steps": 20}}


def test_paired_estimate_is_the_t_interval_and_exact_sign_flip_p():
    from scipy import stats

    d = [-1.0, -2.0, -4.5]
    e = pushaway.paired(d)
    ref = stats.ttest_1samp(d, 0).confidence_interval(0.95)
    assert e["value"] == pytest.approx(np.mean(d))
    assert (e["ci_low"], e["ci_high"]) == pytest.approx((ref.low, ref.high))
    assert e["ci_low"] <= e["value"] <= e["ci_high"]
    # all three negative: of the 8 sign patterns only all-minus and all-plus reach |mean|
    assert e["p_value"] == pytest.approx(2 / 8)
    assert pushaway.paired([-1.0, 1.0, 0.5])["p_value"] > 0.5
    assert math.isnan(pushaway.paired([-3.0])["ci_low"])


@pytest.mark.parametrize(
    "aux, want",
    [
        ([48.0, 49.1, 47.9], "supported"),  # every seed ~2 lower
        ([52.0, 53.1, 51.9], "contradicted"),  # every seed ~2 higher
        ([48.0, 53.0, 50.2], "inconclusive at this N"),
    ],
)
def test_claim_rows_follow_the_verdict_rule_on_planted_differences(tmp_path, aux, want):
    base = [50.0, 51.0, 50.0]
    (tmp_path / "pushaway").mkdir()
    (tmp_path / "pushaway" / "pushaway_single.json").write_text(json.dumps(doc(base, aux)))
    cfg = {"pushaway": {"single": {"recipe": "x"}, "cross": None}, "device": "cpu"}
    rows = pushaway.table2_rows(cfg, tmp_path)
    assert len(rows) == 1
    r = rows[0]
    assert r["verdict"] == want
    assert r["n_seeds"] == 3 and "3 seeds" in r["scope"] and "step 20 of 20" in r["scope"]
    assert r["estimate"]["value"] == pytest.approx(np.mean(np.subtract(aux, base)))
    assert r["command"] == "repdisp reproduce --config configs/reproduce_cpu.yaml --out DIR"
    assert "Table 2 (a)" in r["claim"] and "t over seeds" in r["result"]
    # the cross setting is absent: no row for it, and none at all when the block is off
    assert pushaway.table2_rows({"pushaway": None}, tmp_path) == []


# ------------------------------------------------------------------ the step, on tiny sizes


def tiny_block(tmp_path: Path) -> dict:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)] + ["the", "a", "of", "and"]
    text = "\n".join(" ".join(rng.choice(words, 30)) + " ." for _ in range(400))
    (tmp_path / "wiki.txt").write_text(text)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((ROOT / "configs" / "train_cpu.yaml").read_text())
    domain = {"name": "wikitext", "train": str(tmp_path / "wiki.txt")}
    sizes = {"model": {"n_layer": 1, "n_embd": 16, "n_head": 2}, "vocab_size": 300}
    sizes |= {"block_size": 16, "batch_size": 4, "max_steps": 10, "eval_steps": [5]}
    sizes |= {"eval_blocks": 8, "log_steps": 5, "warmup_steps": 2}
    sizes |= {"aux_weights": [1.0], "lrs": [3.0e-3]}
    single = {"recipe": str(recipe), "domains": [domain]} | sizes
    return {"seeds": [0, 1], "save_every": 5, "single": single, "cross": None}


def grid_cfg(block: dict) -> dict:
    return {"pushaway": block, "device": "cpu"}


def step_once(cfg: dict, out: Path) -> list[str]:
    run = Run(cfg, out, load=lambda spec: None)
    pushaway.pushaway(run)
    return run.steps.log


@pytest.mark.slow  # six tiny training runs: about 30-50 s on 2 cores
def test_step_writes_rows_and_is_skipped_on_rerun(tmp_path):
    cfg, out = grid_cfg(tiny_block(tmp_path)), tmp_path / "run"
    assert any("single" in m for m in step_once(cfg, out))
    res = json.loads((out / "pushaway" / "pushaway_single.json").read_text())
    assert res["run"]["seeds"] == [0, 1] and res["run"]["eval_steps"] == [5, 10]
    assert res["run"]["floor_s"] > 0  # the plain training of the 4 runs trained here
    rows = pushaway.table2_rows(cfg, out)
    assert [r["scope"].split(" · ")[2] for r in rows] == ["step 5 of 10", "step 10 of 10"]
    for r in rows:
        e = r["estimate"]
        assert e["ci_low"] <= e["value"] <= e["ci_high"] and r["n_seeds"] == 2
    mtime = (out / "pushaway" / "pushaway_single.json").stat().st_mtime_ns
    assert step_once(cfg, out) == []  # equal parameters: skipped, the file untouched
    assert (out / "pushaway" / "pushaway_single.json").stat().st_mtime_ns == mtime
    cfg["pushaway"]["seeds"] = [0, 1, 2]  # a new seed: reruns, the two finished runs reused
    assert step_once(cfg, out)
    assert len(list((out / "pushaway" / "single" / "runs").glob("*.json"))) == 6


CHILD = """
import json, sys
from repdisp.reproduce import pushaway
from repdisp.reproduce.steps import Run
cfg = json.loads(open(sys.argv[1]).read())
pushaway.pushaway(Run(cfg, __import__("pathlib").Path(sys.argv[2]), load=lambda s: None))
"""


def numbers(out: Path) -> list:
    res = json.loads((out / "pushaway" / "pushaway_single.json").read_text())
    return [(r["step"], r["base_values"], r["aux_values"]) for r in res["table2"]]


@pytest.mark.slow
def test_a_step_killed_partway_resumes_to_the_uninterrupted_result(tmp_path):
    block = tiny_block(tmp_path)
    block["seeds"] = [0]  # one seed: two runs (λ = 0, then λ = 1), the kill lands in the second
    block["single"] |= {"max_steps": 40, "eval_steps": [20]}
    cfg = grid_cfg(block)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "killed"
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "cfg.json"), str(out)], env=env
    )
    work = out / "pushaway" / "single"
    deadline = time.time() + 120
    # kill inside the second run, after its first checkpoint (one run finished before it)
    while time.time() < deadline and child.poll() is None:
        runs = list((work / "runs").glob("*.json")) if (work / "runs").exists() else []
        ckpt = list((work / ".checkpoints").glob("checkpoint-*")) if runs else []
        if ckpt:
            break
        time.sleep(0.05)
    assert child.poll() is None, "the step ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (out / "pushaway" / "pushaway_single.json").exists()
    step_once(cfg, out)  # the rerun resumes from the checkpoint and the finished run file
    step_once(cfg, tmp_path / "clean")
    got, want = numbers(out), numbers(tmp_path / "clean")
    assert [g[0] for g in got] == [w[0] for w in want]
    for g, w in zip(got, want, strict=True):
        assert [*g[1], *g[2]] == pytest.approx([*w[1], *w[2]], rel=1e-5)
