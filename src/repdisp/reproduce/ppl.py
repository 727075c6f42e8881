"""Perplexity vs dispersion in the grid (§2.2(1), Fig. 3 and Fig. 4): the step and its claims.

Step ``ppl_vs_dispersion`` (per cell) writes one ``PplDispersionResult`` (site ``final``,
last-token vectors, first token skipped) whose series are, in order: the sequence-perplexity
series of the cell's main extraction (``memo``), then one last-token series per length in
``contexts`` (the length ``seq_len`` reuses the main extraction; any other length is a
``final``-only pass over ``min(N, windows at that length)`` segments, where N is
``context_passes.segments`` or the cell's; only on the corpora of ``context_passes.data``). Each series is
``analyses.ppl_dispersion.series_from_extraction`` with Algorithm 1 settings from
``memo.bin_settings``, ``stats_reps`` resamples and ``permutations`` shuffles.

Claims: per series an across-segments row (Fig. 3 sequence / Fig. 4 last-token; the paper: bin
r < 0, so direction -1 on the slope per doubling of perplexity) and, for the sequence series, a
within-segments row (the authors' code; direction -1). Undecided rows say at what N the slope's
CI would exclude 0 (``verdict.n_to_decide``).
"""

from __future__ import annotations

import time
from typing import Any

from .claims import Where, claim, command, fmt
from .config import cell_params, label, on_cell, segments, stem
from .memo import bin_settings, main_extraction, n_available, pass_floor, sampling
from .steps import Run, step, write_result
from .verdict import n_to_decide, p_of, verdict

NAME = "ppl_vs_dispersion"


def params(cfg: dict[str, Any], spec: str, data: str) -> dict[str, Any]:
    """The step's marker: what its result depends on."""
    base = {k: cfg[k] for k in ("dtype", "bin_size", "bins", "curve_bins")}
    base |= cell_params(cfg, spec, data) | {"model": spec, "data": data}
    return base | {
        "stats_reps": cfg["stats_reps"],
        "permutations": cfg["permutations"],
        "contexts": cfg["contexts"],
        "context_passes": cfg["context_passes"],
        "bootstrap": cfg["bootstrap"],
    }


@step(over="cell")
def ppl_step(run: Run, spec: str, data: str) -> None:
    from ..analyses.ppl_dispersion import PplDispersionResult, series_from_extraction
    from ..core.settings import Statistics

    cfg, folder, p = run.cfg, run.cell(spec, data), params(run.cfg, spec, data)
    if run.steps.done(folder, NAME, p):
        run.say(f"[{label(spec)} x {stem(data)}] ppl-vs-dispersion: done, skipped")
        return
    lm = run.model(spec)
    segs, ex, _ = main_extraction(run, spec, data, lm)
    t = time.perf_counter()
    parts = [(segs, ex, False, cfg["seq_len"])]  # (segments, extraction, last_token, length)
    for ctx in cfg["contexts"]:
        if ctx == cfg["seq_len"]:
            parts.append((segs, ex, True, ctx))
        elif on_cell(cfg, "context_passes", data):
            cap = (cfg["context_passes"] or {}).get("segments") or segments(cfg, spec, data)
            n = min(cap, n_available(lm, run.docs(data), ctx))
            c_segs, c_ex = sampling(run, n, ctx).run(
                lm, data, "final", ["last", "within"], run.docs(data)
            )
            run.steps.floor += pass_floor(lm, c_segs.ids, cfg["batch_size"], c_ex)  # ctx's floor
            parts.append((c_segs, c_ex, True, ctx))
    result = PplDispersionResult("last", "final", 1, cfg["seed"])
    for s, e, last_token, _length in parts:
        stats = Statistics(  # Algorithm 1 at this series' own N (a context pass may have fewer)
            **bin_settings(cfg, len(s)),
            stats_reps=cfg["stats_reps"],
            permutations=cfg["permutations"],
        )
        result.series.append(
            series_from_extraction(
                lm.name, data, s, e, stats, site="final", pooling="last", last_token=last_token
            )
        )
    result.seconds = time.perf_counter() - t
    write_result(folder, NAME, result, lm, segs, cfg["seed"])
    run.steps.finish(folder, NAME, p)
    run.say(f"  ppl-vs-dispersion {result.seconds:.0f} s")


@claim(
    over="cell",
    reads=(f"{NAME}.json",),
    missing="ppl-vs-dispersion",
    figure=(f"{NAME}.png", "perplexity vs dispersion (Algorithm 1 bins, 50-bin curve)"),
    ids=("fig3", "fig3-within", "fig4"),
    steps=("ppl_step",),
)
def ppl_rows(cfg: dict[str, Any], at: Where, ppl: dict[str, Any]) -> list[dict[str, Any]]:
    """Fig. 3 / Fig. 4 across-segment rows and the §2.2(1) within-segment row."""
    rows = []
    for s in ppl["series"]:
        st = s.get("stats") or {}
        if not st:
            continue
        n = s["n_segments"]
        last = s["perplexity"] == "last-token"
        fig = "Fig. 4 (last-token)" if last else "Fig. 3 (sequence)"
        a, w = st["across"], st["within"]
        rid = "fig4" if last else "fig3"
        rows.append(
            {
                "id": rid,
                "figure": "Fig. 4" if last else "Fig. 3",
                "claim": f"§2.2(1) {fig}: higher perplexity, lower dispersion across segments "
                f"(final layer, last-token vectors{', ctx ' + str(s['seq_len']) if last else ''})",
                "scope": f"{at.scope}, N={n}",
                "paper": "strong negative correlation (bin r < 0)",
                "result": f"slope per doubling {fmt(a['slope'])} over {a['curve_bins']} bins; "
                f"K={s['n_bins']} Algorithm-1 bins r={fmt(a['pearson'], 3)} (segments "
                "resampled and re-binned)",
                "verdict": verdict(a["slope"]["ci_low"], a["slope"]["ci_high"], -1),
                "n_to_decide": n_to_decide(n, a["slope"]),
                "p": p_of(a["slope"]),
                "command": command(cfg, at.spec, at.data, f"--only {rid}"),
            }
        )
        if not last:
            rows.append(
                {
                    "id": "fig3-within",
                    "figure": "Fig. 3",
                    "claim": "§2.2(1) within segments: higher perplexity, lower token-level "
                    "dispersion (the authors' code)",
                    "scope": f"{at.scope}, N={n}",
                    "paper": "negative correlation",
                    "result": f"slope per doubling {fmt(w['slope'])}; Spearman over segments "
                    f"{fmt(w['spearman'], 3)}",
                    "verdict": verdict(w["slope"]["ci_low"], w["slope"]["ci_high"], -1),
                    "n_to_decide": n_to_decide(n, w["slope"]),
                    "p": p_of(w["slope"]),
                    "command": command(cfg, at.spec, at.data, "--only fig3-within"),
                }
            )
    for r in rows:
        if r["n_to_decide"]:
            r["result"] += f"; N ≈ {r['n_to_decide']:,} would decide if the slope held"
    return rows
