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
    for events in folder.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
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
    cb = repdisp.DispersionCallback(probe, sites=["final", "0.attn"], every_n_steps=2)
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
    for site in ("final", "0.attn"):
        (tag,) = [t for t in scalars if t.endswith(f"dispersion/{site}")]
        steps, values = zip(*sorted(scalars[tag]), strict=True)
        assert steps == (0, 2, 4)
        want = [r[f"dispersion/{site}"] for r in cb.history]
        assert np.allclose(values, want, rtol=1e-6)  # TensorBoard stores float32
    assert any(t.endswith("loss") for t in scalars)  # the Trainer's own scalars beside them


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
