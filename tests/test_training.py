"""Push-away training: the O(N·d) loss against a brute-force N×N float64 reference, the Trainer
integration, the recipe pieces, the sweep's selection, and 2-process training (accelerate, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, TrainingArguments

from repdisp.core.errors import RepdispError
from repdisp.training import PushAwayLoss, PushAwayTrainer, load_config, prepare_data, train_run
from repdisp.training.data import BlockDataset, split_docs
from repdisp.training.run import RunResult
from repdisp.training.sweep import _summarise, choose_weights, table2

B, T, D = 4, 7, 16


def brute_force(h: torch.Tensor, mask: torch.Tensor, domains: torch.Tensor | None) -> torch.Tensor:
    """Mean cosine distance from explicit pairs, float64, written independently of the module."""
    vecs, doms = [], []
    for b in range(h.shape[0]):
        for t in range(h.shape[1]):
            if mask[b, t]:
                v = h[b, t].double()
                vecs.append(v / v.norm())
                doms.append(None if domains is None else int(domains[b]))
    terms = []
    for i, u in enumerate(vecs):
        for j, v in enumerate(vecs):
            if domains is None and i != j:
                terms.append(1 - u @ v)
            elif domains is not None and doms[i] == 0 and doms[j] == 1:
                terms.append(1 - u @ v)
    return torch.stack(terms).mean()


def _batch(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(B, T, D, generator=g) + 0.7).to(dtype).requires_grad_(True)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0
    mask[3, :2] = 0
    return h, mask, torch.tensor([0, 1, 1, 0])


@pytest.mark.parametrize("mode", ["single", "cross"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_value_and_gradient_match_brute_force(mode, dtype):
    h, mask, dom = _batch(dtype)
    dom = dom if mode == "cross" else None
    out = PushAwayLoss(mode)(h, mask, dom)
    (grad,) = torch.autograd.grad(out.loss, h)
    h64 = h.detach().double().requires_grad_(True)
    ref = -brute_force(h64, mask, dom)
    (ref_grad,) = torch.autograd.grad(ref, h64)
    assert out.loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert float(out.loss.detach()) == pytest.approx(float(ref.detach()), abs=1e-6)
    assert float(out.dispersion) == pytest.approx(-float(ref.detach()), abs=1e-6)
    assert torch.allclose(grad.double(), ref_grad, atol=1e-6, rtol=0)
    assert ref_grad.abs().max() > 1e-3  # the comparison is not between two zeros
    assert out.n_tokens == int(mask.sum())


def test_padding_is_ignored():
    h, mask, dom = _batch()
    base = PushAwayLoss("single")(h, mask).loss
    h2 = h.detach().clone()
    h2[mask == 0] = 1e3 * torch.randn(int((mask == 0).sum()), D, dtype=h2.dtype)
    assert float(PushAwayLoss("single")(h2, mask).loss) == pytest.approx(float(base), abs=1e-12)
    # Same as the loss on the kept tokens alone, as one flat "sequence".
    flat = h.detach()[mask.bool()][None]
    assert float(PushAwayLoss("single")(flat).loss) == pytest.approx(float(base), abs=1e-12)
    cross = PushAwayLoss("cross")(h2, mask, dom).loss
    assert float(cross) == pytest.approx(float(PushAwayLoss("cross")(h, mask, dom).loss), abs=1e-12)


def test_cross_mode_needs_domains():
    h, mask, dom = _batch()
    with pytest.raises(RepdispError, match="domain label"):
        PushAwayLoss("cross")(h, mask)
    with pytest.raises(RepdispError, match="both domains"):
        PushAwayLoss("cross")(h, mask, torch.zeros(B, dtype=torch.long))
    with pytest.raises(RepdispError, match="0 or 1"):
        PushAwayLoss("cross")(h, mask, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(RepdispError, match="mode"):
        PushAwayLoss("pairs")


def test_fp32_under_bf16_autocast():
    h, mask, _ = _batch(torch.float32)
    ref = PushAwayLoss()(h.detach().bfloat16().float(), mask)
    lin = torch.nn.Linear(D, D).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = PushAwayLoss()(h.detach().bfloat16(), mask)
        assert lin(h.detach().bfloat16()).dtype == torch.bfloat16  # autocast is really on
    assert out.loss.dtype == torch.float32
    assert float(out.loss) == pytest.approx(float(ref.loss), abs=1e-7)


def _tiny_model(vocab=64):
    torch.manual_seed(0)
    conf = GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        vocab_size=vocab,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        loss_type="ForCausalLM",
    )
    return GPT2LMHeadModel(conf)


def test_trainer_step_logs_ce_aux_dispersion(tmp_path):
    blocks = np.random.default_rng(0).integers(0, 64, size=(16, 12))

    class Catch(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            caught.append(dict(logs))

    caught: list[dict] = []
    model = _tiny_model()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        learning_rate=0.0,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        train_sampling_strategy="sequential",
        disable_tqdm=True,
    )
    ds = BlockDataset([blocks[:8], blocks[8:]], 8, seed=0)
    trainer = PushAwayTrainer(
        model=model,
        args=args,
        train_dataset=ds,
        callbacks=[Catch()],
        aux_weight=0.5,
        push_away=PushAwayLoss("cross"),
    )
    trainer.train()
    steps = [c for c in caught if "ce" in c]
    assert len(steps) == 2
    # Recompute step 1 independently (lr 0: the weights never change).
    batch = [ds[i] for i in range(4)]
    ids = torch.stack([b["input_ids"] for b in batch])
    dom = torch.stack([b["domain"] for b in batch])
    assert sorted(dom.tolist()) == [0, 0, 1, 1]
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids, output_hidden_states=True)
    disp = float(brute_force(out.hidden_states[-1], torch.ones(4, 12), dom))
    first = steps[0]
    assert first["ce"] == pytest.approx(float(out.loss), rel=1e-5)
    assert first["dispersion"] == pytest.approx(disp, abs=1e-5)
    assert first["aux"] == pytest.approx(-disp, abs=1e-5)
    assert first["loss"] == pytest.approx(first["ce"] + 0.5 * first["aux"], abs=1e-3)


def test_split_docs_keeps_all_text_and_cuts_at_lines():
    docs = ["a\nbb\nccc\n", "dddd\neeeee\n", "f\n" * 10]
    parts = split_docs(docs, [0.5, 0.3, 0.2])
    assert "".join(d for p in parts for d in p) == "".join(docs)
    assert all(d.endswith("\n") for p in parts for d in p)
    sizes = [sum(map(len, p)) for p in parts]
    assert abs(sizes[0] - 0.5 * sum(sizes)) <= 6


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndomains: [{name: a, train: python-docs}]\nbatchsize: 3\n")
    with pytest.raises(RepdispError, match="unknown key"):
        load_config(bad)
    three = tmp_path / "three.yaml"
    three.write_text(
        "name: x\ndomains: [{name: a, train: b}, {name: c, train: d}, {name: e, train: f}]\n"
    )
    with pytest.raises(RepdispError, match="one domain"):
        load_config(three)
    cfg = load_config(Path(__file__).parents[1] / "configs" / "train_cpu_cross.yaml", lr=0.01)
    assert cfg.mode == "cross" and cfg.lr == 0.01 and len(cfg.sweep_seeds) >= 2


def _fake_run(lr, w, seed, val, test):
    evals = [
        {"step": 10, "domain": "a", "split": "val", "ppl": val, "dispersion": 0.5},
        {"step": 10, "domain": "a", "split": "test", "ppl": test, "dispersion": 0.5},
    ]
    return RunResult("x", "single", ["a"], lr, w, seed, 10, 4, 8, 1, 1, {}, [], evals, 0.0)


def test_sweep_picks_lambda_on_validation_not_test():
    runs = (
        [_fake_run(1e-3, 0.0, s, 50, 50 + s) for s in (0, 1)]
        + [
            _fake_run(1e-3, 0.1, s, 40, 60)
            for s in (0, 1)  # best on validation, worse on test
        ]
        + [_fake_run(1e-3, 1.0, s, 45, 30) for s in (0, 1)]
    )
    grid = _summarise(runs)
    chosen = choose_weights(grid)
    assert chosen == {"0.001": 0.1}
    (row,) = table2(grid, chosen)
    assert (row["base_mean"], row["aux_mean"]) == (50.5, 60.0)
    assert row["base_sd"] == pytest.approx(np.std([50, 51], ddof=1))


TINY_YAML = """
name: tiny
domains:
  - {name: docs, train: python-docs, max_chars: 60000}
  - {name: code, train: python-code, max_chars: 60000}
model: {n_layer: 1, n_embd: 32, n_head: 2, resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0}
vocab_size: 300
block_size: 16
batch_size: 8
lr: 3.0e-3
warmup_steps: 0
max_steps: 4
eval_steps: []
eval_blocks: 4
log_steps: 1
aux_weight: 0.5
"""


def test_two_processes_match_one_process(tmp_path, monkeypatch):
    """accelerate launch, 2 CPU processes (gloo), all-reduced cross-domain loss: the same curve
    and gradient norms as one process with the same global batch of 8."""
    home = tmp_path / "home"
    monkeypatch.setenv("REPDISP_HOME", str(home))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    conf = tmp_path / "tiny.yaml"
    conf.write_text(TINY_YAML)
    cfg = load_config(conf)
    one = train_run(cfg, prepare_data(cfg))  # also fills the data cache the workers read
    # `accelerate launch --cpu` runs one process (accelerate 1.15); `--multi_gpu` goes through
    # torchrun and, with no visible GPU, the Trainer joins a gloo group on CPU.
    env = {
        **os.environ,
        "REPDISP_HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(29500 + os.getpid() % 1000), "-m", "repdisp", "train",
           "--config", str(conf), "--out", str(tmp_path / "two"), "--quiet"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    two = json.loads((tmp_path / "two" / "run.json").read_text())
    assert two["world_size"] == 2 and one.world_size == 1
    assert len(two["history"]) == len(one.history) == 4
    for a, b in zip(one.history, two["history"], strict=True):
        for k in ("loss", "ce", "aux", "grad_norm"):
            assert b[k] == pytest.approx(a[k], rel=1e-4), k
