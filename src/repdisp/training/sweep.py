"""The λ × learning-rate × seed grid and Table 2 (test perplexity, base vs. +aux).

As in the paper, λ is chosen per learning rate on validation perplexity (here: the mean over
seeds, and over domains in log space, at the last evaluation step); Table 2 then reports test
perplexity of the baseline (λ = 0) and of the chosen λ at every evaluation step and domain, as
mean and standard deviation over seeds. Every run is written to ``OUT/runs/`` as it finishes,
so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..io.results import write_csv, write_json
from .config import TrainConfig
from .data import prepare_data
from .run import RunResult, train_run


@dataclass
class SweepResult:
    """All runs, the grid summary, the λ chosen per lr and Table 2's rows."""

    config: str
    runs: list[RunResult]
    grid: list[dict[str, Any]]  # lr, aux_weight, step, domain, split: mean/sd/values over seeds
    chosen: dict[str, float]  # lr -> λ
    table: list[dict[str, Any]]  # lr, λ, step, domain: base and +aux test ppl

    def markdown(self) -> str:
        lines = [
            f"Table 2 ({self.config}): test perplexity, mean ± sd over seeds; λ chosen per lr on "
            "validation perplexity; dispersion = mean token-level dispersion of the test set",
            "",
            "| domain | lr | step | base | +aux | λ | Δ | dispersion base → +aux | seeds |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.table:
            lines.append(
                f"| {r['domain']} | {r['lr']:g} | {r['step']} | {r['base_mean']:.2f} ± "
                f"{r['base_sd']:.2f} | {r['aux_mean']:.2f} ± {r['aux_sd']:.2f} | "
                f"{r['aux_weight']:g} | {r['aux_mean'] - r['base_mean']:+.2f} | "
                f"{r['base_dispersion']:.3f} → {r['aux_dispersion']:.3f} | {r['n_seeds']} |"
            )
        return "\n".join(lines) + "\n"


def _run_path(out: Path, lr: float, w: float, seed: int) -> Path:
    return out / "runs" / f"lr{lr:g}_aux{w:g}_seed{seed}.json"


def _summarise(runs: list[RunResult]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for r in runs:
        for e in r.evals:
            key = (r.lr, r.aux_weight, e["step"], e["domain"], e["split"])
            groups.setdefault(key, []).append((e["ppl"], e["dispersion"]))
    return [
        {
            "lr": lr,
            "aux_weight": w,
            "step": step,
            "domain": dom,
            "split": split,
            "mean": float(np.mean([p for p, _ in v])),
            "sd": float(np.std([p for p, _ in v], ddof=1)) if len(v) > 1 else 0.0,
            "dispersion": float(np.mean([d for _, d in v])),
            "values": [p for p, _ in v],
        }
        for (lr, w, step, dom, split), v in sorted(groups.items())
    ]


def choose_weights(grid: list[dict[str, Any]]) -> dict[str, float]:
    """Per lr, the λ > 0 with the lowest validation perplexity at the last evaluated step
    (geometric mean over domains of the seed-mean)."""
    chosen: dict[str, float] = {}
    for lr in sorted({g["lr"] for g in grid}):
        rows = [g for g in grid if g["lr"] == lr and g["split"] == "val" and g["aux_weight"] > 0]
        if not rows:
            continue
        last = max(g["step"] for g in rows)
        score: dict[float, list[float]] = {}
        for g in rows:
            if g["step"] == last:
                score.setdefault(g["aux_weight"], []).append(math.log(g["mean"]))
        chosen[f"{lr:g}"] = min(score, key=lambda w: np.mean(score[w]))
    return chosen


def table2(grid: list[dict[str, Any]], chosen: dict[str, float]) -> list[dict[str, Any]]:
    at = {(g["lr"], g["aux_weight"], g["step"], g["domain"], g["split"]): g for g in grid}
    rows = []
    for (lr, w, step, dom, split), base in sorted(at.items()):
        lam = chosen.get(f"{lr:g}")
        if w != 0 or split != "test" or lam is None:
            continue
        aux = at[(lr, lam, step, dom, split)]
        rows.append(
            {
                "domain": dom,
                "lr": lr,
                "step": step,
                "aux_weight": lam,
                "base_mean": base["mean"],
                "base_sd": base["sd"],
                "aux_mean": aux["mean"],
                "aux_sd": aux["sd"],
                "base_dispersion": base["dispersion"],
                "aux_dispersion": aux["dispersion"],
                "base_values": base["values"],
                "aux_values": aux["values"],
                "n_seeds": len(base["values"]),
            }
        )
    return rows


def run_sweep(cfg: TrainConfig, out: str | Path, progress: bool = False) -> SweepResult:
    """Run (or resume) the grid: λ in {0} ∪ sweep_aux_weights, lr in sweep_lrs, seeds."""
    out = Path(out)
    data = prepare_data(cfg)
    runs = []
    weights = [0.0] + [w for w in cfg.sweep_aux_weights if w != 0]
    for lr in cfg.sweep_lrs:
        for w in weights:
            for seed in cfg.sweep_seeds:
                path = _run_path(out, lr, w, seed)
                if path.is_file():
                    runs.append(RunResult.from_dict(json.loads(path.read_text())))
                    continue
                run = train_run(replace(cfg, lr=lr, aux_weight=w, seed=seed), data, progress)
                write_json(path, run.to_dict())
                if progress:
                    last = {
                        e["domain"]: round(e["ppl"], 2) for e in run.evals if e["split"] == "test"
                    }
                    print(f"lr {lr:g} λ {w:g} seed {seed}: test ppl {last} ({run.wall_s:.0f} s)")
                runs.append(run)
    grid = _summarise(runs)
    chosen = choose_weights(grid)
    result = SweepResult(cfg.name, runs, grid, chosen, table2(grid, chosen))
    write_json(out / "sweep.json", {k: v for k, v in result.__dict__.items() if k != "runs"})
    write_csv(out / "grid.csv", [{k: v for k, v in g.items() if k != "values"} for g in grid])
    write_csv(
        out / "table2.csv",
        [{k: v for k, v in r.items() if not k.endswith("values")} for r in result.table],
    )
    (out / "table2.md").write_text(result.markdown())
    _plot(grid, out / "sweep.png")
    return result


def _plot(grid: list[dict[str, Any]], path: Path) -> None:
    """Test perplexity against λ at the last step, one panel per domain, one line per lr."""
    from ..io.results import new_figure, save_figure

    test = [g for g in grid if g["split"] == "test"]
    last = max(g["step"] for g in test)
    doms = sorted({g["domain"] for g in test})
    fig, axes = new_figure(1, len(doms), figsize=(5 * len(doms), 3.6), squeeze=False)
    for ax, dom in zip(axes[0], doms, strict=True):
        for lr in sorted({g["lr"] for g in test}):
            pts = sorted(
                (g["aux_weight"], g["mean"], g["sd"])
                for g in test
                if g["domain"] == dom and g["lr"] == lr and g["step"] == last
            )
            xs = np.arange(len(pts))
            ax.errorbar(
                xs, [p[1] for p in pts], [p[2] for p in pts], marker="o", label=f"lr {lr:g}"
            )
            ax.set_xticks(xs, [f"{p[0]:g}" for p in pts])
        ax.set(xlabel="λ (aux weight)", ylabel=f"test ppl at step {last}", title=dom)
        ax.legend()
    save_figure(fig, path)
