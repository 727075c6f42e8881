"""The one extraction of a grid cell, kept in memory for the cell's steps.

Every cell step (ppl-vs-dispersion, layer-wise, kNN keys, ...) reads the same pass: every block
output, the last block's attention sub-layer and the final site, with last-token vectors,
within-segment dispersion and perplexities, over ``min(segments(cfg, spec, data), windows)``
segments of ``seq_len`` tokens (seed ``cfg["seed"]``, the first token skipped). Within a process
the pass is memoised (``_EXTRACTIONS``, one cell at a time, so a grid holds one cell's vectors;
keyed by the model's identity and everything that picks the segments, so two runs in one process
with other settings never share it);
across processes the shard cache makes a rerun read it back instead of running the model.
Under ``torchrun`` every process joins each cell's extraction first (``share_cells``, before
any step): the shards are split over the ranks and gathered to rank 0, and each rank caches
its own shards, so rank 0's steps find the cell in memory or in the shard cache.

Each computed extraction (and each other-length pass of the Fig. 4 contexts, in ``ppl``) also
times a plain forward over the segments it ran through the model (``pass_floor``: shards read
back from the cache cost no forward and add none) (``plain_forward``: one warm-up and two timed batches,
scaled to N) and adds it to the running step's floor (``steps.Steps.floor``): the grid's floor is
each distinct model x corpus x context length's plain forward once. The calibration itself costs
three batches per pass (about 1% of a 2,000-segment pass at batch 8).

Steps that run other passes add theirs the same way: the random-init model's extraction, the
kNN-LM windows, MC and cloze prompts (``plain_forward_lengths``: the same padded batch shapes),
the fine-tuned models' evaluation; training adds the plain optimiser steps of its recipe
(``training.floor.plain_steps``, in the training result's ``floor`` timing). The page prints
every step's seconds over its floor and the whole run's.

Contract: ``main_extraction(run, spec, data, lm)`` returns ``(segments, extraction, n_windows)``
where ``n_windows`` is how many non-overlapping windows of ``seq_len`` the corpus holds.
"""

from __future__ import annotations

import time
from typing import Any

from .config import label, segments, stem
from .steps import Run

SITES = "all,-1.attn,final"
POOLS = ["last", "within"]

_EXTRACTIONS: dict[tuple[str, str], Any] = {}


def forget() -> None:
    """Drop the memoised extraction (the driver calls it when a model's last step is done)."""
    _EXTRACTIONS.clear()


def n_available(lm: Any, docs: list[str], seq_len: int) -> int:
    """Non-overlapping windows of ``seq_len`` tokens in the corpus's token stream."""
    from ..core.corpus import token_stream

    return len(token_stream(lm.tokenizer, docs)) // seq_len


def sampling(run: Run, n: int, seq_len: int) -> Any:
    """The grid's ``Sampling`` for ``n`` segments of ``seq_len`` tokens."""
    from ..core.sampling import Sampling

    cfg = run.cfg
    return Sampling(
        segments=n,
        seq_len=seq_len,
        seed=cfg["seed"],
        batch_size=cfg["batch_size"],
        skip_first=1,
        cache=True,
        progress=run.progress,
    )


def main_extraction(
    run: Run, spec: str, data: str, lm: Any, dist: Any = None
) -> tuple[Any, Any, int]:
    """The one extraction of a cell (memoised in this process; the shard cache across runs).
    ``dist`` (``core.distributed.Dist``): the processes of a group share it, rank 0 gets it
    all (``share_cells``); the other ranks' extraction is empty."""
    cfg = run.cfg
    asked = segments(cfg, spec, data)
    key = (spec, data, asked, cfg["seq_len"], cfg["seed"], cfg["dtype"], lm.identity)
    if key not in _EXTRACTIONS:
        docs = run.docs(data)
        n_avail = n_available(lm, docs, cfg["seq_len"])
        n = min(asked, n_avail)
        t = time.perf_counter()
        say = run.say if dist is None or dist.is_main else (lambda text: None)
        say(
            f"[{label(spec)} x {stem(data)}] extraction: {n} of {n_avail} segments x "
            f"{cfg['seq_len']} tokens, every block + final ({cfg['dtype']})"
        )
        segs, ex = sampling(run, n, cfg["seq_len"]).run(lm, data, SITES, POOLS, docs, dist=dist)
        say(f"  extraction {time.perf_counter() - t:.0f} s")
        if dist is None:
            run.steps.floor += pass_floor(lm, segs.ids, cfg["batch_size"], ex)
        elif dist.is_main:  # the group ran every shard (or read it back) at once
            run.steps.floor += plain_forward(lm, segs.ids, cfg["batch_size"])
        _EXTRACTIONS.clear()  # keep one cell's vectors in memory
        _EXTRACTIONS[key] = (segs, ex, n_avail)
    return _EXTRACTIONS[key]


def share_cells(
    run: Run, cells: list[tuple[str, str]], dist: Any
) -> dict[tuple[str, str], tuple[float, float]]:
    """Under a launcher (``dist.world_size > 1``): the main extraction of every cell, shared
    by all processes (each computes and caches its shards; rank 0 gathers them). The cells go
    in reverse, so rank 0 ends holding the first cell the grid runs; it reads the others back
    from the shard cache when it gets to them. The other ranks are then done. Returns each
    cell's (seconds, floor seconds): the grid adds them to the cell's first step, as one process
    counts it."""
    seconds = {}
    for spec, data in reversed(cells):
        t = time.perf_counter()
        run.steps.floor = 0.0
        main_extraction(run, spec, data, run.model(spec), dist)
        seconds[spec, data] = (time.perf_counter() - t, run.steps.floor)
    run.steps.floor = 0.0
    return seconds


def plain_forward(lm: Any, ids: Any, batch_size: int, sample: int = 2) -> float:
    """Seconds a plain batched forward (``lm.model(ids)``: logits, no sites read) takes over all
    ``len(ids)`` segments, calibrated on ``sample`` batches after one warm-up batch and scaled
    linearly: the floor of a pass that reads those segments."""
    import torch

    n = len(ids)
    m = min(n, sample * batch_size)
    with torch.inference_mode(), lm.inference():
        x = torch.as_tensor(ids[:m]).to(lm.device)
        lm.model(input_ids=x[:batch_size], use_cache=False)
        t = time.perf_counter()
        for i in range(0, m, batch_size):
            lm.model(input_ids=x[i : i + batch_size], use_cache=False)
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) * n / max(m, 1)


def pass_floor(lm: Any, ids: Any, batch_size: int, ex: Any) -> float:
    """The floor of the part of a pass that ran the model: ``plain_forward`` over the segments
    times the share ``ex.computed / len(ids)`` of them that did not come from the shard cache
    (0, and no calibration, when all were read back)."""
    if not len(ids) or not getattr(ex, "computed", 0):
        return 0.0
    return plain_forward(lm, ids, batch_size) * ex.computed / len(ids)


def plain_forward_lengths(
    lm: Any,
    lengths: Any,
    batch_size: int,
    sample: int = 2,
    order: str = "longest",
    head: bool = True,
) -> float:
    """The floor of a pass over sequences of these ``lengths`` (MC and cloze prompts, kNN-LM
    windows): a plain batched forward over batches of ``batch_size`` in the order the pass runs
    them (``"longest"`` first, as ``mcqa.score`` sorts; ``"given"``: as listed), each right-padded
    to its longest row. ``sample`` batches spread over the pass are timed after one warm-up
    batch and the time is scaled by padded tokens. Token values do not change a forward's cost,
    so the ids are synthetic. ``head=False``: the body alone (``base_model``: no final logits),
    the floor of a pass that reads hidden states only (a kNN-LM datastore's keys)."""
    import numpy as np
    import torch

    n = np.asarray(lengths, dtype=np.int64)
    if len(n) == 0:
        return 0.0
    if order == "longest":
        n = np.sort(n)[::-1]
    batches = [n[i : i + batch_size] for i in range(0, len(n), batch_size)]
    padded = np.array([len(b) * int(b.max()) for b in batches], dtype=np.float64)
    pick = sorted(
        {int(round(j)) for j in np.linspace(0, len(batches) - 1, min(sample, len(batches)))}
    )
    vocab = int(lm.model.get_input_embeddings().weight.shape[0])

    def ids_of(b: Any) -> Any:
        x = (np.arange(len(b) * int(b.max())) * 7919 % max(vocab - 1, 1)).reshape(len(b), -1)
        return torch.as_tensor(x, dtype=torch.long).to(lm.device)

    net = lm.model if head else lm.model.base_model
    with torch.inference_mode(), lm.inference():
        net(input_ids=ids_of(batches[pick[0]]), use_cache=False)
        t = time.perf_counter()
        for j in pick:
            net(input_ids=ids_of(batches[j]), use_cache=False)
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) * padded.sum() / padded[pick].sum()


def bin_settings(cfg: dict[str, Any], n_segments: int) -> dict[str, Any]:
    """Algorithm 1 settings shared by the cell's binned analyses: K bins of B, where B shrinks
    to N // K when there are fewer than K*B segments (at least 2)."""
    return {
        "bin_size": max(2, min(cfg["bin_size"], n_segments // cfg["bins"])),
        "n_bins": cfg["bins"],
        "bootstrap": cfg["bootstrap"],
        "seed": cfg["seed"],
        "curve_bins": cfg["curve_bins"],
    }


def layer_statistics(cfg: dict[str, Any], n_segments: int) -> Any:
    """The ``core.settings.Statistics`` of a cell's layer-wise analyses (the trained model's
    ``layers`` step and its random-init twin in ``emergence``): Algorithm 1 settings of
    ``bin_settings`` with ``layer_stats_reps`` resamples and as many permutations."""
    from ..core.settings import Statistics

    reps = cfg["layer_stats_reps"]
    return Statistics(**bin_settings(cfg, n_segments), stats_reps=reps, permutations=reps)
