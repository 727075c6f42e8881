"""Long training jobs resume: ``finetune`` saves a checkpoint every ``--save-every`` steps beside
its output, and the same command after an interruption (in process, or ``kill -9``) ends with
weights equal to an uninterrupted run; nothing left behind blocks a rerun; a tokenizer without a
pad token works; YAML configs are validated with one-line errors naming the key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from repdisp.cli import main
from repdisp.training.finetune import finetune

SRC = Path(__file__).resolve().parents[1] / "src"


class Interrupted(Exception):
    pass


def _interrupt_at(step: int):
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == step:
                raise Interrupted(step)

    return Interrupt()


def _tiny_lm(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    from repdisp.core.models import LoadedModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=64)
    return LoadedModel(
        GPT2LMHeadModel(cfg), tokenizer, "tiny", "tiny:0", torch.device("cpu"), torch.float32
    )


KW = dict(steps=6, learning_rate=1e-2, batch_size=2, seq_len=16, save_every=2, progress=False)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_interrupted_finetune_resumes_to_the_same_weights(tiny_tokenizer, tmp_path, method):
    assert tiny_tokenizer.pad_token is None  # and finetune works without one
    ref = finetune(_tiny_lm(tiny_tokenizer), "python-docs", tmp_path / "ref", method=method, **KW)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        finetune(
            _tiny_lm(tiny_tokenizer), "python-docs", out, method=method, **KW,
            callbacks=[_interrupt_at(5)],
        )  # fmt: skip
    work = tmp_path / ".run.partial"
    assert not out.exists()  # nothing that looks finished
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-4"]
    res = finetune(_tiny_lm(tiny_tokenizer), "python-docs", out, method=method, **KW)
    assert not work.exists() and not list(tmp_path.glob(".run.tmp-*"))
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    base = _tiny_lm(tiny_tokenizer).model.state_dict()
    assert any(not torch.equal(a[k], base[k]) for k in a if k in base)  # it did train
    assert [r["loss"] for r in res.loss] == [r["loss"] for r in ref.loss]
    assert [r["step"] for r in res.loss] == list(range(1, 7))


def test_other_job_in_the_way_is_discarded_not_reused(tiny_tokenizer, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        finetune(
            _tiny_lm(tiny_tokenizer), "python-docs", out, method="full", **KW,
            callbacks=[_interrupt_at(3)],
        )  # fmt: skip
    other = {**KW, "learning_rate": 5e-3}
    r = finetune(
        _tiny_lm(tiny_tokenizer), "python-docs", out, method="full", **{**other, "progress": True}
    )
    assert "other settings; starting over" in capsys.readouterr().err
    ref = finetune(
        _tiny_lm(tiny_tokenizer), "python-docs", tmp_path / "ref", method="full", **other
    )
    assert [x["loss"] for x in r.loss] == [x["loss"] for x in ref.loss]


def test_crash_without_checkpoints_does_not_block_rerun(tiny_tokenizer, tmp_path):
    out = tmp_path / "run"
    kw = {**KW, "save_every": 0}
    with pytest.raises(Interrupted):
        finetune(
            _tiny_lm(tiny_tokenizer),
            "python-docs",
            out,
            method="full",
            **kw,
            callbacks=[_interrupt_at(2)],
        )
    assert not out.exists()
    (tmp_path / ".run.tmp-999999").mkdir()  # as a kill during the final save leaves it
    r = finetune(_tiny_lm(tiny_tokenizer), "python-docs", out, method="full", **kw)
    assert len(r.loss) == 6 and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def _cli(model_dir, out, steps, save_every):
    return [
        sys.executable, "-m", "repdisp", "finetune", "--model", str(model_dir), "--data",
        "python-docs", "--out", str(out), "--method", "full", "--steps", str(steps), "--lr",
        "1e-2", "--batch-size", "2", "--seq-len", "16", "--save-every", str(save_every),
        "--device", "cpu", "--quiet",
    ]  # fmt: skip


@pytest.mark.slow  # subprocesses killed and rerun: about a minute or more
def test_kill_9_then_same_command_resumes(tiny_gpt2_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "REPDISP_HOME": str(tmp_path / "home")}
    steps = 30
    ref = tmp_path / "ref"
    subprocess.run(_cli(tiny_gpt2_dir, ref, steps, 0), env=env, check=True, capture_output=True)
    out = tmp_path / "run"
    work = tmp_path / ".run.partial"
    proc = subprocess.Popen(
        _cli(tiny_gpt2_dir, out, steps, 5), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if (work / "checkpoint-10" / "trainer_state.json").exists():
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed (machine too fast)")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and any(work.glob("checkpoint-*"))
    done = subprocess.run(_cli(tiny_gpt2_dir, out, steps, 5), env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = json.loads((out / "finetune.json").read_text())["loss"]
    assert [r["step"] for r in losses] == list(range(1, steps + 1))
    assert not work.exists()


BAD_CONFIGS = [
    ("options: [1, 2", "not valid YAML (line"),
    ("- 1\n- 2\n", "must be a mapping"),
    ("options: 3\n", "options must be a mapping"),
    ("model: x\noptions: {}\n", "unknown key(s) model"),
    ("options:\n  stepz: 3\n", "unknown key(s) stepz"),
    ("options:\n  steps: many\n", "steps must be an integer >= 1, got 'many'"),
    ("options:\n  steps: 2.5\n", "steps must be an integer"),
    ("options:\n  steps: 0\n", "steps must be an integer >= 1"),
    ("options:\n  steps: true\n", "steps must be an integer"),
    ("options:\n  lr: -1\n", "lr must be a number > 0"),
    ("options:\n  lr: .nan\n", "lr must be a number"),
    ("options:\n  lr: [1]\n", "lr must be a number"),
    ("options:\n  method: qlora\n", "method must be one of lora, full"),
    ("options:\n  lora_dropout: 1.0\n", "lora_dropout must be a number in [0, 1)"),
    ("options:\n  train_fraction: 0\n", "train_fraction must be a number in (0, 1]"),
    ("options:\n  seed: -1\n", "seed must be an integer in [0,"),
    ("options:\n  save_every: -2\n", "save_every must be an integer >= 0"),
]


@pytest.mark.parametrize("text,match", BAD_CONFIGS)
def test_bad_finetune_config_is_one_line(tmp_path, capsys, text, match):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    args = ["finetune", "--data", "python-docs", "--out", str(tmp_path / "o"), "--config", str(cfg)]
    assert main(args) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("repdisp: error: "), err
    assert match in err[0], err[0]
    assert not (tmp_path / "o").exists()


def test_good_config_values_are_typed(tmp_path):
    from repdisp.cli import build_parser
    from repdisp.commands.finetune import _settings

    cfg = tmp_path / "c.yaml"
    cfg.write_text("options:\n  steps: 4.0\n  lr: 1\n  save_every: 2\n")
    args = build_parser().parse_args(["finetune", "--out", "o", "--config", str(cfg)])
    s = _settings(args)
    assert (s["steps"], s["lr"], s["save_every"]) == (4, 1.0, 2)
    assert type(s["steps"]) is int and type(s["lr"]) is float


# --- train (push-away recipe) --------------------------------------------------------------------

TRAIN_YAML = """
name: tiny-resume
domains:
  - {name: docs, train: python-docs, max_chars: 40000}
  - {name: code, train: python-code, max_chars: 40000}
model: {n_layer: 1, n_embd: 32, n_head: 2}
vocab_size: 300
block_size: 16
batch_size: 8
lr: 3.0e-3
warmup_steps: 2
max_steps: 8
eval_steps: [4]
eval_blocks: 4
log_steps: 2
aux_weight: 0.5
"""


def _final_weights():
    from transformers import TrainerCallback

    got = {}

    class Capture(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kw):
            got.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    return Capture(), got


@pytest.fixture
def train_cfg(tmp_path, monkeypatch):
    from repdisp.training import load_config, prepare_data

    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    conf = tmp_path / "tiny.yaml"
    conf.write_text(TRAIN_YAML)
    cfg = load_config(conf)
    return cfg, prepare_data(cfg)


def test_interrupted_train_resumes_to_the_same_run(train_cfg, tmp_path):
    from repdisp.training import train_run

    cfg, data = train_cfg
    assert cfg.model == {"n_layer": 1, "n_embd": 32, "n_head": 2}  # default dropout 0.1: RNG used
    cap, ref_w = _final_weights()
    ref = train_run(cfg, data, callbacks=[cap])
    work = tmp_path / "ck"
    with pytest.raises(Interrupted):
        train_run(cfg, data, checkpoint_dir=work, save_every=2, callbacks=[_interrupt_at(7)])
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-6"]
    cap, got_w = _final_weights()
    res = train_run(cfg, data, checkpoint_dir=work, save_every=2, callbacks=[cap])
    assert not work.exists()
    assert ref_w.keys() == got_w.keys() and all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    assert res.history == ref.history and len(res.history) == 4
    assert res.evals == ref.evals and {e["step"] for e in res.evals} == {4, 8}
    with pytest.raises(Exception, match="multiple of the config's log_steps"):
        train_run(cfg, data, checkpoint_dir=work, save_every=3)


@pytest.mark.slow  # subprocesses killed and rerun: about a minute or more
def test_kill_9_then_same_train_command_resumes(tmp_path):
    conf = tmp_path / "tiny.yaml"
    conf.write_text(
        TRAIN_YAML.replace("max_steps: 8", "max_steps: 60")
        .replace("eval_steps: [4]", "eval_steps: [30]")
        .replace("log_steps: 2", "log_steps: 5")
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "REPDISP_HOME": str(tmp_path / "home")}
    env.pop("WORLD_SIZE", None)

    def cmd(out, every):
        return [sys.executable, "-m", "repdisp", "train", "--config", str(conf), "--out",
                str(out), "--save-every", str(every), "--quiet"]  # fmt: skip

    subprocess.run(cmd(tmp_path / "ref", 0), env=env, check=True, capture_output=True)
    out = tmp_path / "run"
    proc = subprocess.Popen(cmd(out, 5), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / ".checkpoints" / "checkpoint-15" / "trainer_state.json").exists():
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed (machine too fast)")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "run.json").exists()
    done = subprocess.run(cmd(out, 5), env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    a = json.loads((tmp_path / "ref" / "run.json").read_text())
    b = json.loads((out / "run.json").read_text())
    assert a["history"] == b["history"] and len(a["history"]) == 12
    assert a["evals"] == b["evals"]
    assert not (out / ".checkpoints").exists()


BASE = "name: x\ndomains: [{name: a, train: python-docs}]\n"
BAD_TRAIN = [
    ("name: [x\n", "not valid YAML (line"),
    ("[1, 2]\n", "must be a mapping"),
    ("domains: [{name: a, train: python-docs}]\n", "needs a name"),
    (BASE + "batchsize: 3\n", "unknown key(s) batchsize"),
    (BASE + "lr: fast\n", "lr must be a number > 0, got 'fast'"),
    (BASE + "lr: 0\n", "lr must be a number > 0"),
    (BASE + "max_steps: 1.5\n", "max_steps must be an integer >= 1"),
    (BASE + "max_steps: 0\n", "max_steps must be an integer >= 1"),
    (BASE + "batch_size: '8'\n", "batch_size must be an integer"),
    (BASE + "bf16: 1\n", "bf16 must be true or false"),
    (BASE + "scheduler: cosinus\n", "scheduler must be one of linear, cosine"),
    (BASE + "adam_betas: [0.9]\n", "adam_betas must be a list of at least 2"),
    (BASE + "adam_betas: [0.9, 1.5]\n", "adam_betas[1] must be a number in [0, 1)"),
    (BASE + "eval_steps: 100\n", "eval_steps must be a list"),
    (BASE + "eval_steps: [0]\n", "eval_steps[0] must be an integer >= 1"),
    (BASE + "seed: -1\n", "seed must be an integer in [0,"),
    (BASE + "vocab_size: 10\n", "vocab_size must be an integer >= 257"),
    (BASE + "model: {n_layers: 2}\n", "model: unknown key(s) n_layers"),
    (BASE + "model: {n_embd: 30, n_head: 4}\n", "model.n_embd must be a multiple of model.n_head"),
    (BASE + "model: {resid_pdrop: 2}\n", "model.resid_pdrop must be a number in [0, 1)"),
    (BASE + "model: 3\n", "model must be a mapping"),
    (BASE + "sweep: {lrs: []}\n", "sweep.lrs must be a list of at least 1"),
    (BASE + "sweep: {lr: [1]}\n", "sweep: unknown key(s) lr"),
    (BASE + "sweep: [1]\n", "sweep must be a mapping"),
    ("name: x\ndomains: []\n", "domains must be a list of one domain"),
    ("name: x\ndomains: python-docs\n", "domains must be a list"),
    ("name: x\ndomains: [python-docs]\n", "domains[0] must be a mapping"),
    ("name: x\ndomains: [{name: a}]\n", "domains[0] needs a train"),
    ("name: x\ndomains: [{name: a, train: b, val_fraction: 0.6, test_fraction: 0.5}]\n",
     "val_fraction + test_fraction must be below 1"),
    ("name: x\ndomains: [{name: a, train: b}, {name: a, train: c}]\n", "different names"),
    ("name: x\ndomains: [{name: a, train: b, max_chars: -5}]\n", "domains[0].max_chars must be"),
    ("name: x\ndomains: [{name: a, train: b, colour: red}]\n", "domains[0]: unknown key(s) colour"),
    (BASE + "batch_size: 6\ngrad_accum: 4\n", "not a multiple of grad_accum"),
]  # fmt: skip


@pytest.mark.parametrize("text,match", BAD_TRAIN)
def test_bad_train_config_is_one_line(tmp_path, capsys, text, match):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("repdisp: error: config "), err
    assert match in err[0], err[0]
    assert not (tmp_path / "o").exists()


def test_train_config_non_utf8_and_empty(tmp_path, capsys):
    from repdisp.core.errors import RepdispError
    from repdisp.training import load_config

    bad = tmp_path / "latin.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(RepdispError, match="not UTF-8"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(RepdispError, match="needs a name"):
        load_config(empty)


def test_sweep_reuses_its_runs_and_refuses_another_recipe(train_cfg, tmp_path, monkeypatch):
    import dataclasses

    import repdisp.training.sweep as sweep_mod
    from repdisp.core.errors import RepdispError

    cfg, _ = train_cfg
    cfg = dataclasses.replace(
        cfg, max_steps=2, eval_steps=[], sweep_aux_weights=[0.5], sweep_lrs=[3e-3], sweep_seeds=[0]
    )
    out = tmp_path / "sweep"
    first = sweep_mod.run_sweep(cfg, out)
    assert len(first.runs) == 2 and (out / "sweep_job.json").exists()
    calls = []
    real = sweep_mod.run_train
    monkeypatch.setattr(sweep_mod, "run_train", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = sweep_mod.run_sweep(cfg, out)
    assert calls == [] and [r.to_dict() for r in again.runs] == [r.to_dict() for r in first.runs]
    with pytest.raises(RepdispError, match="another recipe"):
        sweep_mod.run_sweep(dataclasses.replace(cfg, max_steps=3), out)
    with pytest.raises(RepdispError, match="another recipe"):
        sweep_mod.run_sweep(dataclasses.replace(cfg, model={"n_layer": 2}), out)
    (out / "sweep_job.json").unlink()  # runs written before the recipe was recorded
    with pytest.raises(RepdispError, match="is a run of another recipe"):
        sweep_mod.run_sweep(dataclasses.replace(cfg, max_steps=3), out)
    assert sweep_mod.run_sweep(cfg, out).runs and calls == []
