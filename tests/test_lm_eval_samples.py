"""lm-evaluation-harness ``--log_samples`` files as input to the accuracy probe and hard slices.

The samples files are written by lm-eval itself (a local task YAML over the shared ARC-Challenge
dev file, ``--limit`` questions): the correctness read back must be the harness's per-document
``acc``/``acc_norm`` and its mean the harness's aggregate; repdisp's own scorer
(``applications.mcqa``) on the same questions must give the harness's log-likelihoods, the same
choices, and so the same probe and hard-slice numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA

import repdisp
from repdisp.applications.accuracy_probe import accuracy_probe
from repdisp.applications.hard_slices import hard_slices
from repdisp.applications.lm_eval_samples import read_samples, score_samples
from repdisp.applications.mcqa import load_arc, make_prompts, score

ARC_DEV = DATA / "arc" / "ARC-Challenge-Dev.jsonl"
TASK_YAML = """\
task: arc_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question.stem}}}}\\nAnswer:"
doc_to_target: "{{{{(question.choices|map(attribute='label')|list).index(answerKey)}}}}"
doc_to_choice: "{{{{question.choices|map(attribute='text')|list}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _need_data():
    pytest.importorskip("lm_eval")
    if not ARC_DEV.exists():
        pytest.skip(f"shared ARC-Challenge data not found at {ARC_DEV}")


def _lm_eval(model_dir, tmp_path, limit, data=ARC_DEV):
    """Run lm-eval (its CLI, offline) on the ARC jsonl ``data``; return its output folder."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "arc_local.yaml").write_text(TASK_YAML.format(path=data))
    out = tmp_path / "lm_eval_out"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={model_dir},dtype=float32", "--include_path", str(tasks),
           "--tasks", "arc_local", "--limit", str(limit), "--log_samples", "--output_path",
           str(out), "--device", "cpu", "--batch_size", "8"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"))  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def _check_against_own_scorer(lm, out, limit, data=ARC_DEV):
    samples = read_samples(out)
    assert samples.task == "arc_local" and len(samples.items) == limit
    (results_file,) = out.rglob("results_*.json")
    agg = json.loads(results_file.read_text())["results"]["arc_local"]
    records = [json.loads(x) for f in out.rglob("samples_*.jsonl") for x in f.open()]
    records.sort(key=lambda r: r["doc_id"])
    # correctness as the harness scored each document, and its aggregate
    assert samples.correct.tolist() == [r["acc"] == 1.0 for r in records]
    assert samples.correct.mean() == pytest.approx(agg["acc,none"])

    result, agreement = score_samples(lm, out, progress=False)
    assert result.acc == pytest.approx(agg["acc,none"])
    assert (result.pred_norm == result.gold).mean() == pytest.approx(agg["acc_norm,none"])

    # repdisp's own scorer on the same questions (lm-eval --limit N keeps the first N)
    items = load_arc(data)[:limit]
    assert [it.id for it in items] == [it.id for it in result.items]
    assert [it.answer for it in items] == result.gold.tolist()
    own = score(lm, items, make_prompts(items, "qa"), progress=False)
    for mine, theirs in zip(own.loglik, samples.loglik, strict=True):
        assert np.allclose(mine, theirs, atol=2e-3, rtol=1e-4)
    assert agreement == 1.0 and own.pred.tolist() == result.pred.tolist()
    assert np.allclose(own.embeddings, result.embeddings, atol=1e-5)

    kw = {"model": lm.name, "task": "arc", "sample": 6, "seeds": 3, "levels": (0, 0.5, 1)}
    a, b = accuracy_probe(result, **kw), accuracy_probe(own, **kw)
    assert [lv.mean for lv in a.levels] == pytest.approx([lv.mean for lv in b.levels], abs=1e-6)
    assert a.n_correct == int(samples.correct.sum())
    ha, hb = hard_slices(result, 0.25), hard_slices(own, 0.25)
    assert ha.auroc == pytest.approx(hb.auroc) and ha.order.tolist() == hb.order.tolist()
    return result


def test_tiny_model_samples_equal_own_scorer(tiny_gpt2, tiny_gpt2_dir, tmp_path):
    """The tiny model's context is 256 positions: the first 16 ARC questions whose longest
    prompt + choice fits (a filtered copy in tmp), so neither side truncates."""
    _need_data()
    keep = []
    for line in ARC_DEV.read_text().splitlines():
        q = json.loads(line)["question"]
        longest = max(len(c["text"]) for c in q["choices"])
        text = f"Question: {q['stem']}\nAnswer: " + "x" * longest
        if len(tiny_gpt2.tokenizer(text).input_ids) < 200 and len(keep) < 16:
            keep.append(line)
    data = tmp_path / "arc_short.jsonl"
    data.write_text("\n".join(keep) + "\n")
    out = _lm_eval(tiny_gpt2_dir, tmp_path, 16, data)
    result = _check_against_own_scorer(tiny_gpt2, out, 16, data)

    from repdisp.cli import main

    args = ["hard-slices", "--model", str(tiny_gpt2_dir), "--lm-eval-samples", str(out),
            "--fraction", "0.25", "--device", "cpu", "--out", str(tmp_path / "hs"), "--quiet"]
    assert main(args) == 0
    hs = repdisp.load_result(tmp_path / "hs" / "hard_slices.json")
    assert hs.auroc == pytest.approx(hard_slices(result, 0.25).auroc)


@pytest.mark.slow
def test_smollm2_samples_equal_own_scorer_and_cli(smollm2, tmp_path):
    from repdisp.cli import main
    from repdisp.core.models import converted_dir

    folder = converted_dir("smollm2-135m")
    if not (folder / "config.json").exists():
        pytest.skip("smollm2-135m not converted (repdisp models prepare smollm2-135m)")
    _need_data()
    out = _lm_eval(folder, tmp_path, 8)
    result = _check_against_own_scorer(smollm2, out, 8)
    args = ["accuracy-probe", "--model", "smollm2-135m", "--lm-eval-samples", str(out),
            "--sample", "6", "--num-seeds", "3", "--levels", "0,50,100", "--device", "cpu",
            "--dtype", "float32", "--out", str(tmp_path / "probe"), "--quiet"]  # fmt: skip
    assert main(args) == 0
    probe = repdisp.load_result(tmp_path / "probe" / "probe.json")
    assert probe.task == "arc_local" and probe.acc == pytest.approx(result.acc)


def _record(doc_id, acc, target=1):
    args = {f"gen_args_{i}": {"arg_0": f"Question: q{doc_id}\nAnswer:", "arg_1": f" choice {i}"}
            for i in range(3)}  # fmt: skip
    ll = [[str(-3.0 - i), "False"] for i in range(3)]  # the harness's argmax is choice 0
    return {"doc_id": doc_id, "doc": {"id": f"d{doc_id}"}, "target": str(target),
            "arguments": args, "filtered_resps": ll, "acc": acc}  # fmt: skip


def test_hand_written_records_and_bad_input(tmp_path):
    f = tmp_path / "samples_mytask_2026-01-01T00-00-00.000.jsonl"
    f.write_text("".join(json.dumps(_record(i, acc)) + "\n" for i, acc in enumerate([1.0, 0.0])))
    s = read_samples(tmp_path)
    assert s.task == "mytask" and [it.id for it in s.items] == ["d0", "d1"]
    assert s.items[0].choices == ["choice 0", "choice 1", "choice 2"]
    assert s.prompts[0].continuations[2] == " choice 2"
    # the metric decides: doc 0 right (pred = gold = 1), doc 1 wrong (argmax 0 != gold 1)
    assert s.pred.tolist() == [1, 0] and s.correct.tolist() == [True, False]
    with pytest.raises(repdisp.RepdispError, match="no per-document metric 'exact_match'"):
        read_samples(f, metric="exact_match")
    f.write_text(json.dumps(_record(0, 0.5)) + "\n" + json.dumps(_record(1, 1.0)) + "\n")
    with pytest.raises(repdisp.RepdispError, match="not 0 or 1"):
        read_samples(f)
    f.write_text(json.dumps(_record(0, 1.0, target=7)) + "\n")
    with pytest.raises(repdisp.RepdispError, match="not a choice index"):
        read_samples(f)
    f.write_text('{"doc_id": 0, "resps": []}\n')
    with pytest.raises(repdisp.RepdispError, match="not a multiple-choice"):
        read_samples(f)
    with pytest.raises(repdisp.RepdispError, match="not found"):
        read_samples(tmp_path / "nope")
    (tmp_path / "samples_other_2026.jsonl").write_text(json.dumps(_record(0, 1.0)) + "\n")
    with pytest.raises(repdisp.RepdispError, match="several tasks"):
        read_samples(tmp_path)
    with pytest.raises(repdisp.RepdispError, match="fewer than 2 documents of task other"):
        read_samples(tmp_path, task="other")
    with pytest.raises(repdisp.RepdispError, match="no samples of task 'x'"):
        read_samples(tmp_path, task="x")


def test_cli_bad_samples_path_is_one_line(tmp_path, capsys):
    from repdisp.cli import main

    args = ["accuracy-probe", "--model", "smollm2-135m", "--lm-eval-samples", str(tmp_path / "x"),
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]
