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
