"""The kNN-LM key profile in the grid (§3.3, Table 1): the step and its claim.

Step ``knn_keys`` (per cell, when ``cfg["knn"]``) reads the cell's main extraction (``memo``):
per seed s in 0..seeds-1 a permutation of the extracted segments (``default_rng(s)``), and for
each N in ``knn.chunks`` (capped at the segments extracted) the first N of it - uniform random
chunks of ``seq_len`` tokens, since the segments are a uniform sample of the corpus's windows -
and the dispersion of their last-token vectors at the last block's ``h_att`` (``L.attn``) and
``h_ffn`` (``L.ffn``) (``applications.knnlm.key_rows``). Written as a ``KeyProfile``.

Claim: at the largest N, the paired difference D(h_att) - D(h_ffn) over seeds (same chunks for
both sites), with a t-interval over seeds and a one-sample t-test p-value; the paper says h_att
is more dispersed (direction +1).
"""

from __future__ import annotations

import time
from typing import Any

from .claims import Where, claim, command
from .config import cell_params, label, stem
from .memo import main_extraction
from .steps import Run, step, write_result
from .verdict import verdict

NAME = "knn_keys"


@step(over="cell", when="knn")
def knn_step(run: Run, spec: str, data: str) -> None:
    """Table 1 from the main extraction's last-token vectors at the last block's sub-layers."""
    import numpy as np

    from ..applications.knnlm import KeyProfile, key_rows

    cfg, folder = run.cfg, run.cell(spec, data)
    params = {"model": spec, "data": data, "dtype": cfg["dtype"]} | cell_params(cfg, spec, data)
    params |= {"knn": cfg["knn"]}
    if run.steps.done(folder, NAME, params):
        return
    t = time.perf_counter()
    lm = run.model(spec)
    segs, ex, n_avail = main_extraction(run, spec, data, lm)
    last = lm.n_blocks - 1
    names = [f"{last}.attn", f"{last}.ffn"]
    chunks = sorted({min(c, len(segs)) for c in cfg["knn"]["chunks"]})
    seeds = cfg["knn"]["seeds"]
    draws = [np.random.default_rng(s).permutation(len(segs)) for s in range(seeds)]
    rows, best = key_rows({site: ex.get(site, "last") for site in names}, draws, chunks)
    prof = KeyProfile(
        model=lm.name,
        data=data,
        chunk_len=cfg["seq_len"],
        n_windows=n_avail,
        seeds=seeds,
        chunks=chunks,
        sites=names,
        n_extracted=len(segs),
        recommended=best,
        rows=rows,
        seconds=time.perf_counter() - t,
    )
    write_result(folder, NAME, prof, lm, segs, cfg["seed"])
    run.steps.finish(folder, NAME, params)
    run.say(f"[{label(spec)} x {stem(data)}] kNN key profile: {best} is more dispersed")


@claim(
    over="cell",
    reads=(f"{NAME}.json",),
    missing="kNN key profile",
    figure=(f"{NAME}.png", "kNN key profile: h_att vs h_ffn of the last block"),
    when="knn",
    ids=("table1",),
    steps=("knn_step",),
)
def knn_rows(cfg: dict[str, Any], at: Where, knn: dict[str, Any]) -> list[dict[str, Any]]:
    """Table 1: h_att more dispersed than h_ffn (paired over seeds)."""
    import numpy as np
    from scipy import stats as sps

    n = max(knn["chunks"])
    rows = {r["site"]: r for r in knn["rows"] if r["n_chunks"] == n}
    att = next(r for s, r in rows.items() if s.endswith(".attn"))
    ffn = next(r for s, r in rows.items() if s.endswith(".ffn"))
    diff = np.array(att["values"]) - np.array(ffn["values"])  # same chunks per seed: paired
    mean = float(diff.mean())
    if len(diff) > 1:
        half = float(sps.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)))
        p = float(sps.ttest_1samp(diff, 0.0).pvalue) if diff.std() > 0 else None
    else:
        half, p = float("nan"), None
    row = {
        "id": "table1",
        "figure": "Table 1",
        "claim": "§3.3 Table 1: the last block's attention sub-layer output (h_att) is more "
        "dispersed than its FFN output (h_ffn), so it is the kNN-LM key",
        "scope": f"{at.scope}, N={n} chunks of {knn['chunk_len']}, {knn['seeds']} seeds",
        "paper": "h_att more dispersed (and the better key)",
        "result": f"D(h_att)-D(h_ffn) = {mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}] "
        f"(t-interval over seeds); recommended key {knn['recommended']}",
        "verdict": verdict(mean - half, mean + half, 1),
        "p": p,
        "command": command(cfg, at.spec, at.data, "--only table1"),
    }
    return [row]
