"""DispersionCallback: dispersion of the model being trained, logged through the Trainer's
``report_to`` (TensorBoard here) and read back from the event files."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import repdisp
from repdisp.core.geometry import dispersion

pytest.importorskip("tensorboard")


class _Ids:
    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        import torch

        x = torch.as_tensor(self.ids[i])
        return {"input_ids": x, "labels": x.clone()}


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for run in sorted({e.parent for e in folder.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run))  # reads every event file of the run folder
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_dispersion_scalars_in_tensorboard(tiny_gpt2, tmp_path, monkeypatch):
    import torch
    from transformers import Trainer, TrainingArguments

    from repdisp.core.corpus import make_segments

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    torch.manual_seed(0)
    model = copy.deepcopy(tiny_gpt2.model).train()  # the shared fixture stays untouched
    train = make_segments(tiny_gpt2.tokenizer, "python-docs", 16, 16, seed=1)
    probe = make_segments(tiny_gpt2.tokenizer, "python-docs", 8, 16, seed=2)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4,
        learning_rate=5e-3, logging_steps=1, save_strategy="no", report_to=["tensorboard"],
        use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=_Ids(train.ids))
    cb = repdisp.DispersionCallback(probe, sites=["final", "-1.attn"], every_n_steps=2)
    cb.attach(trainer)
    trainer.train()

    # measured at steps 0, 2, 4; each value is the exact dispersion of the model at that time
    assert [h["step"] for h in cb.history] == [0, 2, 4]
    model.eval()
    with torch.no_grad():
        h = model(torch.as_tensor(probe.ids), output_hidden_states=True).hidden_states[-1]
    assert cb.history[-1]["dispersion/final"] == pytest.approx(
        dispersion(h[:, -1].numpy()), abs=1e-6
    )
    assert cb.history[0]["dispersion/final"] != cb.history[-1]["dispersion/final"]  # it trained

    scalars = _scalars(tmp_path / "tb")
    for site in ("final", "-1.attn"):  # the tags as the README names them, the site as given
        steps, values = zip(*sorted(scalars[f"dispersion/{site}"]), strict=True)
        assert steps == (0, 2, 4)
        want = [r[f"dispersion/{site}"] for r in cb.history]
        assert np.allclose(values, want, rtol=1e-6)  # TensorBoard stores float32
    assert "train/loss" in scalars  # the Trainer's own scalars beside them, named by transformers
    assert not [t for t in scalars if t.startswith("train/dispersion")]
    logged = [r for r in trainer.state.log_history if "dispersion/-1.attn" in r]
    assert [r["step"] for r in logged] == [0, 2, 4]


def test_without_attach_values_ride_on_the_next_log(tiny_gpt2, tmp_path):
    import torch
    from transformers import Trainer, TrainingArguments

    from repdisp.core.corpus import make_segments

    torch.manual_seed(0)
    model = copy.deepcopy(tiny_gpt2.model).train()
    train = make_segments(tiny_gpt2.tokenizer, "python-docs", 8, 16, seed=1)
    probe = make_segments(tiny_gpt2.tokenizer, "python-docs", 4, 16, seed=2).ids
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    cb = repdisp.DispersionCallback(probe, every_n_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=_Ids(train.ids), callbacks=[cb])
    trainer.train()
    logged = [r for r in trainer.state.log_history if "dispersion/final" in r]
    assert len(logged) >= 2 and all(0 < r["dispersion/final"] < 2 for r in logged)


def test_bad_probe_is_refused():
    with pytest.raises(repdisp.RepdispError, match="at least 2"):
        repdisp.DispersionCallback(np.zeros((1, 8), dtype=np.int64))
    with pytest.raises(repdisp.RepdispError, match="token ids"):
        repdisp.DispersionCallback(np.zeros((4, 8), dtype=np.float32))


def test_finetune_report_to_tensorboard(tiny_gpt2_dir, tmp_path):
    """``repdisp finetune --report-to tensorboard --dispersion-every 1`` (LoRA): the dispersion
    curve lands in OUT/logs next to the loss."""
    import shutil

    from transformers import AutoTokenizer

    from repdisp.cli import main

    model_dir = tmp_path / "tiny"  # the tiny model with a pad token, as the Trainer pads
    shutil.copytree(tiny_gpt2_dir, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(model_dir)
    out = tmp_path / "ft"
    args = ["finetune", "--model", str(model_dir), "--data", "python-docs", "--out", str(out)]
    args += ["--steps", "2", "--batch-size", "2", "--seq-len", "16", "--train-fraction", "0.9"]
    args += ["--report-to", "tensorboard", "--dispersion-every", "1", "--quiet", "--device", "cpu"]
    assert main(args) == 0
    scalars = _scalars(out / "logs")
    (tag,) = [t for t in scalars if t.endswith("dispersion/final")]
    steps, values = zip(*sorted(scalars[tag]), strict=True)
    assert steps == (0, 1, 2) and all(0 < v < 2 for v in values)
    assert any(t.endswith("loss") for t in scalars)


def test_train_report_to_tensorboard(tmp_path, monkeypatch):
    """``repdisp train --report-to tensorboard --dispersion-every 2``: the push-away Trainer's own
    batch dispersion and the probe dispersion both land in OUT/logs; run.json reads back."""
    from test_training import TINY_YAML

    from repdisp.cli import main

    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    conf = tmp_path / "tiny.yaml"
    conf.write_text(TINY_YAML)
    out = tmp_path / "run"
    args = ["train", "--config", str(conf), "--out", str(out), "--quiet"]
    assert main(args + ["--report-to", "tensorboard", "--dispersion-every", "2"]) == 0
    scalars = _scalars(out / "logs")
    (probe,) = [t for t in scalars if t.endswith("dispersion/final")]
    assert [s for s, _ in sorted(scalars[probe])] == [0, 2, 4]
    batch = [t for t in scalars if t.endswith("/dispersion")]  # logged by PushAwayTrainer
    assert batch and len(scalars[batch[0]]) == 4
    run = repdisp.load_result(out / "run.json")
    history = {h["step"]: h for h in run.history}
    for step, value in scalars[batch[0]]:
        assert value == pytest.approx(history[step]["dispersion"], rel=1e-5)


def test_dispersion_added_to_evaluation_metrics(tiny_gpt2, tmp_path):
    import torch
    from transformers import Trainer, TrainingArguments

    from repdisp.core.corpus import make_segments

    torch.manual_seed(0)
    model = copy.deepcopy(tiny_gpt2.model).train()
    train = make_segments(tiny_gpt2.tokenizer, "python-docs", 8, 16, seed=1)
    probe = make_segments(tiny_gpt2.tokenizer, "python-docs", 4, 16, seed=2)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
        eval_strategy="steps", eval_steps=2, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=_Ids(train.ids),
                      eval_dataset=_Ids(probe.ids))  # fmt: skip
    cb = repdisp.DispersionCallback(probe).attach(trainer)  # only at evaluations
    metrics = trainer.evaluate()
    assert metrics["eval_dispersion/final"] == pytest.approx(cb.history[-1]["dispersion/final"])
    trainer.train()
    assert [h["step"] for h in cb.history] == [0, 2]


class _WandbSpy:
    """Stands for the ``wandb`` module inside transformers' WandbCallback: forwards everything
    (the run is real, offline) and records what is handed to ``wandb.log``."""

    def __init__(self, module):
        self._module, self.logged = module, {}

    def __getattr__(self, name):
        return getattr(self._module, name)

    def log(self, row, *a, **kw):
        for k, v in row.items():
            if k != "train/global_step":
                self.logged.setdefault(k, []).append((row["train/global_step"], v))
        return self._module.log(row, *a, **kw)


def test_same_names_in_every_tracker_at_steps_and_evaluations(tiny_gpt2, tmp_path, monkeypatch):
    """Training steps log ``dispersion/<site>``, evaluations ``eval_dispersion/<site>``, under
    exactly those names in log_history, TensorBoard, W&B (offline) and a CSV log; the values
    agree everywhere and with the callback's own history."""
    import importlib.util

    import torch
    from transformers import Trainer, TrainingArguments

    from repdisp.core.corpus import make_segments
    from repdisp.training.csvlog import read_csv_log

    wandb = importlib.util.find_spec("wandb") is not None  # W&B checked where it is installed
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    torch.manual_seed(0)
    model = copy.deepcopy(tiny_gpt2.model).train()
    train = make_segments(tiny_gpt2.tokenizer, "python-docs", 8, 16, seed=1)
    probe = make_segments(tiny_gpt2.tokenizer, "python-docs", 6, 16, seed=2)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4,
        learning_rate=5e-3, eval_strategy="steps", eval_steps=3, logging_steps=1,
        save_strategy="no", report_to=["tensorboard"] + ["wandb"] * wandb, use_cpu=True,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    csv_log = repdisp.CSVLogger(tmp_path / "log.csv")
    trainer = Trainer(model=model, args=args, train_dataset=_Ids(train.ids),
                      eval_dataset=_Ids(probe.ids), callbacks=[csv_log])  # fmt: skip
    cb = repdisp.DispersionCallback(probe, sites="final,-1.attn", every_n_steps=2).attach(trainer)
    if wandb:
        (wb,) = [c for c in trainer.callback_handler.callbacks
                 if type(c).__name__ == "WandbCallback"]  # fmt: skip
        wb._wandb = spy = _WandbSpy(wb._wandb)
    trainer.train()
    metrics = trainer.evaluate()  # after training: step 4 again, already measured
    assert not wandb or list((tmp_path / "wb").rglob("*.wandb"))  # the offline run was written

    # steps 0, 2, 4 measured for training; evaluations at step 3 (a new measurement), at the
    # last step 4 and by evaluate() (both reuse step 4's measurement)
    assert [h["step"] for h in cb.history] == [0, 2, 3, 4]
    by_step = {h["step"]: h for h in cb.history}
    want = {}
    for site in ("final", "-1.attn"):
        want[f"dispersion/{site}"] = [(s, by_step[s][f"dispersion/{site}"]) for s in (0, 2, 4)]
        want[f"eval_dispersion/{site}"] = [(s, by_step[s][f"dispersion/{site}"]) for s in (3, 4, 4)]
        assert metrics[f"eval_dispersion/{site}"] == by_step[4][f"dispersion/{site}"]
    # the exact value at the end: brute force on the trained model's last-token final states
    model.eval()
    with torch.no_grad():
        h = model(torch.as_tensor(probe.ids), output_hidden_states=True).hidden_states[-1]
    assert by_step[4]["dispersion/final"] == pytest.approx(dispersion(h[:, -1].numpy()), abs=1e-6)

    history = {}
    for rec in trainer.state.log_history:
        for k, v in rec.items():
            if "dispersion/" in k:
                history.setdefault(k, []).append((rec["step"], v))
    trackers = {
        "log_history": history,
        "tensorboard": _scalars(tmp_path / "tb"),
        "csv": read_csv_log(tmp_path / "log.csv"),
    } | ({"wandb": spy.logged} if wandb else {})
    for where, got in trackers.items():
        for name, pairs in want.items():
            assert name in got, f"{name} missing from {where}: {sorted(got)}"
            steps, values = zip(*sorted(got[name]), strict=True)
            assert list(steps) == [s for s, _ in pairs], (where, name)
            assert np.allclose(values, [v for _, v in pairs], rtol=1e-6), (where, name)
        assert not [k for k in got if k.startswith(("train/dispersion", "eval/dispersion"))]
    assert "eval/loss" in trackers["tensorboard"] and "eval_loss" in trackers["csv"]
