"""The floors reproduce prints beside each step: plain forwards (fixed and ragged shapes), plain
optimiser steps and evaluations, and step times that count each second once.

A fake clock advanced by the fake model's own work makes the calibrate-then-scale formulas exact,
so the tests check the formulas, not the machine."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import repdisp.reproduce.memo as memo
import repdisp.reproduce.steps as steps_mod
import repdisp.training.floor as floor


class Clock:
    def __init__(self):
        self.t = 0.0

    def perf_counter(self):
        return self.t

    def __deepcopy__(self, memo):  # a model's copy ticks the same clock
        return self


class TokenCostModel(torch.nn.Module):
    """A model whose forward costs one clock second per input token (padding included)."""

    def __init__(self, clock, vocab=50):
        super().__init__()
        self.clock = clock
        self.emb = torch.nn.Embedding(vocab, 4)
        self.head = torch.nn.Linear(4, vocab)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, labels=None, use_cache=False):
        self.clock.t += input_ids.numel()
        logits = self.head(self.emb(input_ids))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
            )
        return SimpleNamespace(logits=logits, loss=loss)


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    fake = SimpleNamespace(perf_counter=c.perf_counter)
    for mod in (memo, floor, steps_mod):
        monkeypatch.setattr(mod, "time", fake)
    return c


class _NoCtx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def fake_lm(clock):
    model = TokenCostModel(clock)
    return SimpleNamespace(model=model, device=torch.device("cpu"), inference=_NoCtx)


@pytest.mark.parametrize("order", ["longest", "given"])
def test_ragged_floor_is_the_padded_tokens_of_every_batch(clock, order):
    lengths = [5, 17, 3, 9, 9, 30, 2, 11, 8, 6, 21]
    got = memo.plain_forward_lengths(fake_lm(clock), lengths, batch_size=3, order=order)
    n = sorted(lengths, reverse=True) if order == "longest" else lengths
    want = sum(len(n[i : i + 3]) * max(n[i : i + 3]) for i in range(0, len(n), 3))
    # one second per token: calibrated on two batches, scaled by padded tokens = every batch
    assert got == pytest.approx(want, rel=1e-12)
    assert memo.plain_forward_lengths(fake_lm(clock), [], batch_size=3) == 0.0


class Body(torch.nn.Module):
    """A body whose forward costs half a clock second per token (no head)."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def forward(self, input_ids, use_cache=False):
        self.clock.t += 0.5 * input_ids.numel()
        return SimpleNamespace(last_hidden_state=None)


def test_a_body_only_floor_runs_the_base_model_not_the_head(clock):
    lm = fake_lm(clock)
    lm.model.base_model = Body(clock)
    lengths = [7, 7, 7, 4]
    full = memo.plain_forward_lengths(lm, lengths, batch_size=2, order="given")
    body = memo.plain_forward_lengths(lm, lengths, batch_size=2, order="given", head=False)
    assert full == pytest.approx(2 * 7 + 2 * 7, rel=1e-12)
    assert body == pytest.approx(0.5 * full, rel=1e-12)


def test_the_knnlm_floor_is_the_body_over_the_datastore_and_the_full_model_held_out(clock):
    from repdisp.applications.knnlm.windows import plan_windows
    from repdisp.reproduce.knnlm_ppl import window_floor

    lm = fake_lm(clock)
    lm.model.base_model = Body(clock)
    lm.bos_id = 1
    win = {"context": 8, "stride": 4, "batch_size": 3}

    def padded(n):  # tokens of every batch of windows (BOS included), right-padded
        ls = [e - b + 1 for b, e, _ in plan_windows(n, 8, 4)]
        return sum(len(ls[i : i + 3]) * max(ls[i : i + 3]) for i in range(0, len(ls), 3))

    got = window_floor(lm, 40, 18, win)
    assert got == pytest.approx(0.5 * padded(40) + padded(18), rel=1e-12)


def test_fixed_floor_scales_the_timed_batches_to_all_segments(clock):
    ids = np.zeros((37, 12), dtype=np.int64)
    got = memo.plain_forward(fake_lm(clock), ids, batch_size=8)
    assert got == pytest.approx(37 * 12, rel=1e-12)  # 16 rows timed, scaled by 37 / 16


def test_plain_steps_scale_to_the_run_and_leave_model_and_rng_alone(clock):
    torch.manual_seed(3)
    model = TokenCostModel(clock)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    ids = np.random.default_rng(0).integers(0, 50, (4, 10))
    got = floor.plain_steps(model, ids, steps=30, grad_accum=2)
    # each step: 2 micro-batches of 40 tokens; the median timed step, scaled to 30
    assert got == pytest.approx(30 * 2 * 40, rel=1e-12)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())
    assert floor.plain_steps(model, ids, steps=0) == 0.0


class SlowFirstModel(TokenCostModel):
    """Each forward costs its tokens, times ``slow`` for the calls listed in ``at``."""

    def __init__(self, clock, at, slow=10.0):
        super().__init__(clock)
        self.calls, self.at, self.slow = 0, set(at), slow

    def forward(self, input_ids, labels=None, use_cache=False):
        self.calls += 1
        if self.calls in self.at:
            self.clock.t += (self.slow - 1) * input_ids.numel()
        return super().forward(input_ids, labels=labels, use_cache=use_cache)


def test_plain_steps_take_the_median_step_after_the_warm_up(clock):
    ids = np.zeros((4, 10), dtype=np.int64)
    # calls 1-2 are the warm-up (slow: not counted); call 3, the first timed step, is slow too:
    # the median of the three timed steps is a normal one, where a mean would be 4x
    model = SlowFirstModel(clock, at=(1, 2, 3))
    assert floor.plain_steps(model, ids, steps=10) == pytest.approx(10 * 40, rel=1e-12)
    # the copy's calls are counted on the copy; the original ran none
    assert model.calls == 0


def test_plain_eval_is_every_block_once(clock):
    model = TokenCostModel(clock).train()
    blocks = np.zeros((45, 6), dtype=np.int64)
    assert floor.plain_eval(model, blocks, batch_size=16) == pytest.approx(45 * 6, rel=1e-12)
    assert model.training  # the mode it had


def test_a_step_with_sub_steps_counts_each_second_once(clock, tmp_path):
    s = steps_mod.Steps(tmp_path)
    s.started = clock.t
    clock.t += 7.0
    s.floor = 2.0
    s.finish(tmp_path, "queries", {})
    clock.t += 3.0
    s.finish(tmp_path, "scores", {})
    seconds = json.loads((tmp_path / "step_seconds.json").read_text())
    floors = json.loads((tmp_path / "floor_seconds.json").read_text())
    assert seconds == {"./queries": 7.0, "./scores": 3.0}  # not 7 and 10
    assert floors == {"./queries": 2.0, "./scores": 0.0}
