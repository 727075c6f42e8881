"""The floor of a training run: the seconds the same number of plain optimiser steps take.

A plain step is what any training script does at the least: ``grad_accum`` times a forward with
``labels=`` and a backward on one micro-batch of the run's shape, then one AdamW step (the fused
kernel where torch has one, as the Trainer's default ``adamw_torch_fused``) and ``zero_grad``;
no Trainer, no auxiliary loss, no logging, evaluation or checkpoints. Each of ``sample`` steps
is timed after ``warmup`` steps and the median step is scaled to ``steps`` (on the CPU the first
steps after the warm-up ran up to 30% slower than the rest, a full SmolLM2 fine-tune 2.5-2.7 s
against 1.9-2.2 s, so a mean of two would overstate the floor), on a deep copy of the model (the
trained model, its gradients and its optimiser are untouched) with the RNG state forked (dropout
draws nothing from the run's generators). A run's seconds over this floor are what the recipe
adds to plain training (``reproduce`` prints the ratio per step).

``plain_eval(model, blocks, batch_size)`` is the floor of an evaluation pass: a plain forward
(``labels=``, no hidden states kept) over ``blocks`` in batches, timed on ``sample`` batches
after one warm-up batch and scaled to all of them.

Contract: ``plain_steps(model, ids, steps, grad_accum)`` returns seconds >= 0; ``ids`` is one
micro-batch of token ids (``(B, T)`` integers); ``steps`` <= 0 gives 0.0 without running."""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np


def plain_steps(
    model: Any,
    ids: np.ndarray,
    steps: int,
    grad_accum: int = 1,
    sample: int = 3,
    bf16: bool = False,
    warmup: int = 2,
) -> float:
    """Seconds of ``steps`` plain optimiser steps of ``model`` on micro-batches shaped like
    ``ids`` (see the module docstring); ``bf16``: under bfloat16 autocast, as the Trainer's
    ``bf16=True`` runs."""
    import torch

    if steps <= 0:
        return 0.0
    device = next(model.parameters()).device
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        net = copy.deepcopy(model)
        net.train()
        params = [p for p in net.parameters() if p.requires_grad]
        opt = _adamw(params)
        x = torch.as_tensor(np.asarray(ids), dtype=torch.long, device=device)

        def one() -> None:
            for _ in range(max(1, grad_accum)):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = net(input_ids=x, labels=x).loss
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def timed() -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            one()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

        for _ in range(warmup):  # allocates the optimiser state and the allocator's pools
            one()
        seconds = float(np.median([timed() for _ in range(sample)])) * steps
    return seconds


def _adamw(params: list[Any]) -> Any:
    """AdamW with the fused kernel where torch has one for these parameters, as the Trainer's
    default ``optim="adamw_torch_fused"`` picks; else the ``foreach`` one."""
    import torch

    try:
        return torch.optim.AdamW(params, lr=1e-5, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=1e-5)


def plain_eval(model: Any, blocks: np.ndarray, batch_size: int = 16, sample: int = 2) -> float:
    """Seconds of a plain forward with ``labels=`` over ``blocks`` (rows of token ids) in
    batches of ``batch_size`` (see the module docstring)."""
    import torch

    blocks = np.asarray(blocks)
    n = len(blocks)
    if n == 0:
        return 0.0
    device = next(model.parameters()).device
    m = min(n, sample * batch_size)
    x = torch.as_tensor(blocks[:m], dtype=torch.long, device=device)
    was = model.training
    model.eval()
    with torch.no_grad():
        model(input_ids=x[:batch_size], labels=x[:batch_size])
        t = time.perf_counter()
        for i in range(0, m, batch_size):
            model(input_ids=x[i : i + batch_size], labels=x[i : i + batch_size])
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - t) * n / m
    model.train(was)
    return seconds
