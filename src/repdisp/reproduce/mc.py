"""Multiple choice in the grid (§3.1): accuracy probe and hard slices, the step and its claims.

Step ``mc`` (per model x task in ``cfg["mc"]``) scores the task once (``applications.mcqa``;
the query embeddings and correctness are kept in ``queries.npz`` behind their own marker), then
writes ``probe.json`` (``accuracy_probe``: ``probe.sample`` queries per mixture, ``probe.seeds``
seeds) and ``hard_slices.json``: the lowest-dispersion fraction ``hard_slices.fraction``, and
the AUROC of -score as a detector of wrong answers with a 95% percentile-bootstrap CI over
queries (``auroc_ci``: 1000 resamples of the queries with replacement, seed ``cfg["seed"]``;
resamples holding one class only are dropped).

Claims: the Spearman correlation of level accuracy with level dispersion (direction +1), and
AUROC > 0.5 (direction +1 on AUROC - 0.5). A model within 0.1 of chance (0.25) is marked too weak
to test.
"""

from __future__ import annotations

import time
from typing import Any

from ..core.errors import RepdispError
from .claims import Where, claim, public, quote
from .config import label
from .memo import plain_forward_lengths
from .steps import Run, step, write_result
from .verdict import verdict


def auroc(scores: Any, wrong: Any) -> float:
    """AUROC of -score as a detector of wrong answers (``hard_slices.auroc_wrong``); NaN when a
    resample holds only one class."""
    from ..applications.hard_slices import auroc_wrong

    try:
        return auroc_wrong(scores, wrong)
    except RepdispError:
        return float("nan")


def auroc_ci(scores: Any, wrong: Any, reps: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap CI of ``auroc`` over queries (NaN, NaN when no resample has
    both classes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(scores)
    vals = [auroc(scores[i], wrong[i]) for i in (rng.integers(0, n, n) for _ in range(reps))]
    vals = np.array([v for v in vals if np.isfinite(v)])
    if len(vals) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [0.025, 0.975])
    return float(lo), float(hi)


@step(over="task")
def mc_step(run: Run, spec: str, mc: dict[str, Any]) -> None:
    from ..applications.accuracy_probe import accuracy_probe, plot_probe
    from ..applications.hard_slices import hard_slices
    from ..applications.mcqa import MCResult, evaluate_task
    from ..io.results import GenericResult

    cfg, steps = run.cfg, run.steps
    folder = run.folder(spec, mc["task"])
    params = {"model": spec, "dtype": cfg["dtype"], "seed": cfg["seed"]} | mc
    p_all = params | cfg["probe"] | cfg["hard_slices"]
    if steps.done(folder, "mc", p_all, ("probe.json", "hard_slices.json")):
        return
    t = time.perf_counter()
    queries = folder / "queries.npz"
    if steps.done(folder, "queries", params, ("queries.npz",)):
        result = MCResult.load(queries)
    else:
        result = evaluate_task(
            run.model(spec), mc["task"], mc["data"], limit=mc.get("limit"), seed=cfg["seed"],
            batch_size=cfg["batch_size"], progress=run.progress,
        )  # fmt: skip
        result.save(queries)
        steps.floor += plain_forward_lengths(run.model(spec), result.lengths, cfg["batch_size"])
        steps.finish(folder, "queries", params)
    probe = accuracy_probe(
        result,
        model=spec,
        task=mc["task"],
        sample=cfg["probe"]["sample"],
        seeds=cfg["probe"]["seeds"],
    )
    write_result(folder, "probe", probe, seed=cfg["seed"], figure=plot_probe([probe]))
    hs = hard_slices(result, fraction=cfg["hard_slices"]["fraction"], correct_by="acc")
    lo, hi = auroc_ci(hs.scores, ~result.correct, seed=cfg["seed"])
    summary = {
        "model": spec,
        "task": mc["task"],
        "n_queries": len(result.items),
        "acc": result.acc,
        "n_slice": hs.n_slice,
        "fraction": hs.fraction,
        "auroc_wrong": hs.auroc,
        "auroc_ci": [lo, hi],
        "error_rate_slice": hs.error_rate_slice,
        "error_rate_all": hs.error_rate_all,
    }
    write_result(
        folder, "hard_slices", GenericResult(summary), seed=cfg["seed"], tables=False, figure=False
    )
    steps.finish(folder, "mc", p_all)
    run.say(
        f"[{label(spec)} x {mc['task']}] accuracy probe + hard slices "
        f"{time.perf_counter() - t:.0f} s (acc {result.acc:.3f})"
    )


@claim(
    over="task",
    reads=("probe.json", "hard_slices.json"),
    missing="accuracy probe, hard slices",
    ids=("fig8", "hard-slices"),
    steps=("mc_step",),
)
def mc_rows(
    cfg: dict[str, Any], at: Where, probe: dict[str, Any], hs: dict[str, Any]
) -> list[dict[str, Any]]:
    """§3.1: accuracy rises with dispersion (controlled mixtures); hard slices catch errors."""
    spec, mc = at.spec, at.mc
    chance = 0.25
    weak = abs(probe["acc"] - chance) < 0.1
    note = f" acc {probe['acc']:.3f} (chance {chance:.2f})" + (
        ": near chance, the probe is uninformative" if weak else ""
    )
    sp = probe.get("spearman_means")
    rows = []
    limit = f" --limit {mc['limit']}" if mc.get("limit") else ""
    common = (
        f"--model {spec} --task {mc['task']} --data {quote(public(mc['data']))}{limit} --out DIR"
    )
    cmd = (
        f"repdisp accuracy-probe {common} --sample {cfg['probe']['sample']} "
        f"--num-seeds {cfg['probe']['seeds']}"
    )
    hs_cmd = f"repdisp hard-slices {common} --fraction {cfg['hard_slices']['fraction']}"
    if sp:
        v = verdict(sp["ci_low"], sp["ci_high"], 1)
        rows.append(
            {
                "id": "fig8",
                "figure": "Fig. 8",
                "claim": "§3.1 more questions answered correctly, higher dispersion of the "
                "query embeddings (controlled mixtures)",
                "scope": f"{label(spec)} · {mc['task']}, pool {probe['n_pool']}",
                "paper": "positive correlation",
                "result": f"Spearman over {len(probe['levels'])} level means {sp['r']:+.3f} "
                f"[{sp['ci_low']:+.3f}, {sp['ci_high']:+.3f}];{note}",
                "verdict": v + (" (model too weak to test)" if weak else ""),
                "command": cmd,
            }
        )
    a, (lo, hi) = hs.get("auroc_wrong"), hs.get("auroc_ci", [float("nan")] * 2)
    if a is not None:
        rows.append(
            {
                "id": "hard-slices",
                "figure": "§3.1 hard slices",
                "claim": "§3.1 hard slices: the lowest-dispersion queries are more often wrong",
                "scope": f"{label(spec)} · {mc['task']}, {hs['n_queries']} queries",
                "paper": "AUROC(low score -> wrong) > 0.5",
                "result": f"AUROC {a:.3f} [{lo:.3f}, {hi:.3f}]; error rate slice "
                f"{hs['error_rate_slice']:.3f} vs all {hs['error_rate_all']:.3f};{note}",
                "verdict": verdict(lo - 0.5, hi - 0.5, 1) + (" (model too weak)" if weak else ""),
                "command": hs_cmd,
            }
        )
    return rows
