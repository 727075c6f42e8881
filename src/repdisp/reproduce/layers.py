"""Layer-wise perplexity vs dispersion in the grid (§2.2(2), Fig. 5): the step and its claim.

Step ``layers`` (per cell) runs ``analyses.layers.layers_from_extraction`` on the cell's main
extraction (``memo``) at every block output and the final site (the ``.attn`` sub-layer is left
to the kNN step), last-token vectors, first token skipped, with ``layer_stats_reps`` resamples
and as many permutations per site, and the Algorithm 1 settings of ``memo.bin_settings``.

Claim: over the second half of the blocks (``I.ffn`` sites with statistics; blocks m//2.. of m),
count the across-segment slopes whose CI is below / above 0 and apply
``verdict.block_verdict`` (the paper: negative in the later layers); the within-segment counts
are reported beside it.
"""

from __future__ import annotations

import time
from typing import Any

from .claims import Where, claim, command
from .config import cell_params, label, stem
from .memo import layer_statistics, main_extraction
from .steps import Run, step, write_result
from .verdict import block_verdict

NAME = "layers"


def params(cfg: dict[str, Any], spec: str, data: str) -> dict[str, Any]:
    """The step's marker: what its result depends on."""
    base = {k: cfg[k] for k in ("dtype", "bin_size", "bins", "curve_bins")}
    base |= cell_params(cfg, spec, data) | {"model": spec, "data": data}
    return base | {"stats_reps": cfg["layer_stats_reps"], "bootstrap": cfg["bootstrap"]}


@step(over="cell")
def layers_step(run: Run, spec: str, data: str) -> None:
    from ..analyses.layers import layers_from_extraction

    cfg, folder, p = run.cfg, run.cell(spec, data), params(run.cfg, spec, data)
    if run.steps.done(folder, NAME, p):
        run.say(f"[{label(spec)} x {stem(data)}] layers: done, skipped")
        return
    lm = run.model(spec)
    segs, ex, _ = main_extraction(run, spec, data, lm)
    t = time.perf_counter()
    lres = layers_from_extraction(
        lm.name, data, segs, ex, layer_statistics(cfg, len(segs)), pooling="last", skip_first=1,
        sites=[x for x in ex.sites if not x.endswith(".attn")],
    )  # fmt: skip
    lres.seconds = time.perf_counter() - t
    write_result(folder, NAME, lres, lm, segs, cfg["seed"])
    run.steps.finish(folder, NAME, p)
    run.say(f"  layers {lres.seconds:.0f} s")


def second_half(lay: dict[str, Any]) -> tuple[list[dict], tuple[int, int, int], tuple[int, ...]]:
    """The ``I.ffn`` sites with statistics, and over the second half of them the counts
    (CI<0, CI>0, m) of the across-segment slopes, then of the within-segment slopes."""
    blocks = [x for x in lay["layers"] if x["site"].endswith(".ffn") and x.get("stats")]
    second = blocks[len(blocks) // 2 :]

    def counts(kind: str) -> tuple[int, int, int]:
        neg = sum(x["stats"][kind]["slope"]["ci_high"] < 0 for x in second)
        pos = sum(x["stats"][kind]["slope"]["ci_low"] > 0 for x in second)
        return neg, pos, len(second)

    return blocks, counts("across"), counts("within")


@claim(
    over="cell",
    reads=(f"{NAME}.json",),
    missing="layers",
    figure=(f"{NAME}.png", "layer-wise: correlation and slope per block"),
    ids=("fig5",),
    steps=("layers_step",),
)
def layer_rows(cfg: dict[str, Any], at: Where, lay: dict[str, Any]) -> list[dict[str, Any]]:
    """Fig. 5: the negative relation in the deeper layers, counted over second-half blocks."""
    blocks, (neg, pos, m), (wneg, wpos, _) = second_half(lay)
    row = {
        "id": "fig5",
        "figure": "Fig. 5",
        "claim": "§2.2(2) Fig. 5: the negative relation holds in the deeper layers (across "
        "segments, slope per doubling at every block output)",
        "scope": f"{at.scope}, N={lay['n_segments']}, second half = blocks "
        f"{len(blocks) - m}..{len(blocks) - 1} of 0..{len(blocks) - 1}",
        "paper": "negative in the later layers",
        "result": f"across: {neg}/{m} second-half blocks CI<0, {pos} CI>0; within: {wneg}/{m} "
        f"CI<0, {wpos} CI>0",
        "verdict": block_verdict(neg, pos, m),
        "command": command(cfg, at.spec, at.data, "--only fig5"),
    }
    return [row]
