"""Table 2 in the grid: the push-away auxiliary loss, trained from scratch (steps and claims).

Two rows of the paper (§4, Table 2): (a) with a single domain (WikiText), adding the push-away
loss (λ > 0) lowers test perplexity vs cross-entropy alone (λ = 0) at 500 and 1000 steps; (b)
with pairs across two domains (WikiText and Python code) it lowers test perplexity on both.

Step ``pushaway`` (once per grid, when ``cfg["pushaway"]``): for each setting of the block
(``single``, ``cross``) a training recipe (``recipe``: a ``configs/train_*.yaml`` file) with the
block's overrides (any recipe key; ``aux_weights``/``lrs`` are its sweep grid, the block's
``seeds`` its paired seeds) goes through ``training.sweep.run_sweep`` into
``out/pushaway/SETTING/``: λ ∈ {0} ∪ aux_weights × lrs × seeds, a small GPT-2 from random init
per run, λ chosen per lr on validation perplexity (mean over seeds; geometric mean over domains)
as the paper does. The result (the sweep's Table 2 rows, per-seed test perplexities) is written
as ``out/pushaway/pushaway_SETTING.json``, with the seeds, steps and wall time in its ``run``
block. Resume: finished runs are files (``runs/``), a run killed partway restarts from its last
checkpoint (``save_every`` steps; the result equals an uninterrupted run's); a setting whose
marker matches its parameters is skipped. A folder holding runs of another recipe is cleared
(they are this step's own cache).

Claim (once per grid): one row per setting, lr, evaluation step and test domain. Estimate: the
mean over seeds s of d_s = ppl_test(λ*, s) − ppl_test(0, s) (paired by seed, same data order and
init seed). CI: the t-interval over seeds, mean ± t_{0.975, S−1} · sd/√S (S ≥ 2; with S = 1 no
CI). p: the exact sign-flip permutation p over the 2^S sign patterns of the d_s (two-sided; its
floor is 2/2^S, so 3 seeds can never reach p < 0.25: the verdict uses the CI). Verdict: the
page's rule (``verdict.verdict``, paper direction −1: the difference below 0).
"""

from __future__ import annotations

import itertools
import math
import shutil
import time
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError
from .claims import claim, read
from .steps import Run, step, write_result
from .verdict import verdict

SETTINGS = ("single", "cross")
_SWEEP_KEYS = {"aux_weights": "sweep_aux_weights", "lrs": "sweep_lrs"}
_PAPER = {
    "single": "Table 2 (a) single domain: the push-away loss (λ>0, chosen on validation) lowers "
    "test perplexity vs λ=0",
    "cross": "Table 2 (b) cross domain (pairs across WikiText and code): the push-away loss "
    "lowers test perplexity on both domains",
}


def folder(out: Path) -> Path:
    return out / "pushaway"


def recipe_path(spec: dict[str, Any]) -> Path:
    path = Path(spec["recipe"])
    if not path.is_absolute() and not path.exists():  # the configs/ beside this package's repo
        path = Path(__file__).resolve().parents[3] / path
    return path


def recipe(block: dict[str, Any], setting: str) -> Any:
    """The ``TrainConfig`` of one setting: its recipe file with the block's overrides."""
    from ..training.config import load_config

    spec = dict(block[setting])
    path = recipe_path(spec)
    spec.pop("recipe")
    over = {_SWEEP_KEYS.get(k, k): v for k, v in spec.items()}
    over["sweep_seeds"] = list(block["seeds"])
    return load_config(path, **over)


def params(block: dict[str, Any], setting: str) -> dict[str, Any]:
    """What identifies a setting's result: the block's keys for it (the recipe file's content
    too, so an edited recipe reruns)."""
    spec = dict(block[setting])
    try:
        text = recipe_path(spec).read_text()
    except OSError as e:
        raise RepdispError(
            f"pushaway.{setting}: cannot read recipe {spec['recipe']}: {e}"
        ) from None
    return spec | {"recipe_text": text, "seeds": list(block["seeds"]), "setting": setting}


@step(over="grid", when="pushaway")
def pushaway(run: Run) -> None:
    from ..training.sweep import run_sweep

    block, top = run.cfg["pushaway"], folder(run.out)
    for setting in SETTINGS:
        if not block.get(setting):
            continue
        name, par = f"pushaway_{setting}", params(block, setting)
        if run.steps.done(top, name, par):
            continue
        cfg, work = recipe(block, setting), top / setting
        t0 = time.perf_counter()
        try:
            res = run_sweep(cfg, work, progress=False, save_every=int(block.get("save_every", 0)))
        except RepdispError as e:
            if "another recipe" not in str(e):
                raise
            shutil.rmtree(work)  # this step's own cache, of other settings: start again
            res = run_sweep(cfg, work, progress=False, save_every=int(block.get("save_every", 0)))
        run.steps.floor += res.floor_s  # the runs trained now (finished ones are reused)
        info = {
            "seeds": list(cfg.sweep_seeds),
            "max_steps": cfg.max_steps,
            "eval_steps": sorted(
                {s for s in cfg.eval_steps if s <= cfg.max_steps} | {cfg.max_steps}
            ),
            "aux_weights": [0.0, *[w for w in cfg.sweep_aux_weights if w != 0]],
            "lrs": list(cfg.sweep_lrs),
            "n_params": res.runs[0].n_params if res.runs else None,
            "step_wall_s": time.perf_counter() - t0,
            "train_wall_s": sum(r.wall_s for r in res.runs),
        }
        write_result(top, name, res, seed=cfg.sweep_seeds[0], figure=False, tables=False, run=info)
        run.steps.finish(top, name, par)
        run.say(f"[pushaway] {setting}: {len(res.runs)} runs, {info['step_wall_s']:.0f} s")


def paired(diffs: list[float]) -> dict[str, Any]:
    """Mean of per-seed differences, its t-interval over seeds and the exact sign-flip p."""
    from scipy import stats

    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        lo = hi = math.nan
    else:
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        h = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        lo, hi = mean - h, mean + h
    flips = [
        abs(sum(s * d for s, d in zip(signs, diffs, strict=True))) / n
        for signs in itertools.product((1, -1), repeat=n)
    ]
    p = sum(f >= abs(mean) - 1e-12 for f in flips) / len(flips)
    return {"value": mean, "ci_low": lo, "ci_high": hi, "p_value": p, "n": n}


def _command(cfg: dict[str, Any]) -> str:
    scale = "gpu" if str(cfg.get("device")).startswith("cuda") else "cpu"
    return f"repdisp reproduce --config configs/reproduce_{scale}.yaml --out DIR"


def rows_of(cfg: dict[str, Any], setting: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per lr x evaluation step x test domain of one setting's result."""
    info = doc.get("run") or {}
    rows = []
    for r in doc["table2"]:
        diffs = [a - b for a, b in zip(r["aux_values"], r["base_values"], strict=True)]
        e = paired(diffs)
        seeds = info.get("seeds") or list(range(len(diffs)))
        ci = (
            f"[{e['ci_low']:+.2f}, {e['ci_high']:+.2f}] (t over seeds)"
            if math.isfinite(e["ci_low"])
            else "(no CI: one seed)"
        )
        per = ", ".join(f"s{s}:{d:+.2f}" for s, d in zip(seeds, diffs, strict=False))
        base = sum(r["base_values"]) / len(diffs)
        aux = sum(r["aux_values"]) / len(diffs)
        rows.append(
            {
                "id": "table2a" if setting == "single" else "table2b",
                "figure": "Table 2",
                "claim": f"§4 {_PAPER[setting]}",
                "scope": f"{doc['config']} · {r['domain']} · step {r['step']} of "
                f"{info.get('max_steps', '?')} · lr {r['lr']:g} · {len(diffs)} seeds",
                "paper": "test ppl(λ*) − test ppl(λ=0) < 0",
                "result": f"Δppl {e['value']:+.2f} {ci}, exact sign-flip p={e['p_value']:.3g}; "
                f"base {base:.2f} → {aux:.2f} at λ*={r['aux_weight']:g}; per seed {per}",
                "verdict": verdict(e["ci_low"], e["ci_high"], -1),
                "command": _command(cfg),
                "n_seeds": len(diffs),
                "estimate": e,
            }
        )
    return rows


@claim(over="grid", when="pushaway", ids=("table2a", "table2b"), steps=("pushaway",))
def table2_rows(cfg: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Table 2 (a) and (b): rows of the finished settings (none while neither is)."""
    rows = []
    for setting in SETTINGS:
        if (cfg["pushaway"] or {}).get(setting):
            doc = read(folder(out) / f"pushaway_{setting}.json")
            if doc:
                rows += rows_of(cfg, setting, doc)
    return rows
