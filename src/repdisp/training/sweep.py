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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.errors import RepdispError
from ..io.results import Result, load_result, new_figure, write_csv, write_json, write_result
from .config import TrainConfig
from .data import prepare_data
from .run import RunOptions, RunResult, _job_spec, run_train


@dataclass
class SweepResult(Result):
    """All runs, the grid summary, the λ chosen per lr and Table 2's rows. The runs are written
    one file each (``OUT/runs/``), not into the sweep's own file."""

    kind: ClassVar[str] = "sweep"
    run_keys: ClassVar[tuple[str, ...]] = ("floor_s",)

    config: str
    grid: list[dict[str, Any]]  # lr, aux_weight, step, domain, split: mean/sd/values over seeds
    chosen: dict[str, float]  # lr -> λ
    table2: list[dict[str, Any]]  # lr, λ, step, domain: base and +aux test ppl
    runs: list[RunResult] = field(default_factory=list, repr=False)
    floor_s: float = 0.0  # the plain-training floor of the runs trained by this call (floor.py)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if k != "runs"}

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "table2": [
                {k: v for k, v in r.items() if not k.endswith("values")} for r in self.table2
            ],
            "grid": [{k: v for k, v in g.items() if k != "values"} for g in self.grid],
        }

    def table(self) -> str:
        return self.markdown()

    def figure(self) -> Any:
        return _plot(self.grid)

    def headline(self) -> dict[str, Any] | None:
        if not self.table2:
            return None
        r = self.table2[-1]
        return {
            "what": f"test perplexity with the push-away loss (λ {r['aux_weight']:g} chosen on "
            f"validation) vs cross-entropy alone: {self.config}, {r['domain']}, lr {r['lr']:g}, "
            f"step {r['step']}, {r['n_seeds']} seeds",
            "value": r["aux_mean"] - r["base_mean"],
            "ci": None,
            "answer": f"{r['base_mean']:.2f} ± {r['base_sd']:.2f} → {r['aux_mean']:.2f} ± "
            f"{r['aux_sd']:.2f} (mean ± sd over seeds)",
            "significant": None,
        }

    def markdown(self) -> str:
        lines = [
            f"Table 2 ({self.config}): test perplexity, mean ± sd over seeds; λ chosen per lr on "
            "validation perplexity; dispersion = mean token-level dispersion of the test set",
            "",
            "| domain | lr | step | base | +aux | λ | Δ | dispersion base → +aux | seeds |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.table2:
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


def run_sweep(
    cfg: TrainConfig, out: str | Path, progress: bool = False, *, save_every: int = 0
) -> SweepResult:
    """Run (or resume) the grid: λ in {0} ∪ sweep_aux_weights, lr in sweep_lrs, seeds.

    Finished runs are kept in ``out/runs`` and reused by the same command; ``out/sweep_job.json``
    records the recipe and training tokens they belong to, and a folder holding runs of another
    recipe is refused (never mixed in). ``save_every``: checkpoints within a run, as ``train``."""
    out = Path(out)
    data = prepare_data(cfg)
    names = [d.name for d in cfg.domains]
    job = json.loads(json.dumps(_job_spec(cfg, data, names, 1)))
    for k in ("lr", "aux_weight", "seed"):  # the grid's axes: each run file names its own
        job.pop(k, None)
    job_file = out / "sweep_job.json"
    if job_file.exists():
        try:
            old = json.loads(job_file.read_text())
        except ValueError:
            old = None
        if old != job:
            raise RepdispError(
                f"{out} holds sweep runs of another recipe or other training data; choose "
                "another --out or delete it"
            )
    else:
        # runs written before the recipe was recorded: kept only when what they record agrees
        want = {"name": cfg.name, "domains": names, "max_steps": cfg.max_steps}
        want |= {"batch_size": cfg.batch_size, "block_size": cfg.block_size}
        for path in sorted((out / "runs").glob("*.json")):
            try:
                got = json.loads(path.read_text())
                same = all(got.get(k) == v for k, v in want.items())
            except (OSError, ValueError, AttributeError):
                same = False
            if not same:
                raise RepdispError(
                    f"{path} is a run of another recipe; choose another --out or delete it"
                )
        write_json(job_file, job)
    runs, floor = [], 0.0
    weights = [0.0] + [w for w in cfg.sweep_aux_weights if w != 0]
    for lr in cfg.sweep_lrs:
        for w in weights:
            for seed in cfg.sweep_seeds:
                path = _run_path(out, lr, w, seed)
                if path.is_file():
                    done = load_result(path)  # a file from before `kind` is read as generic
                    if not isinstance(done, RunResult):
                        done = RunResult.from_dict(done.to_dict())
                    runs.append(done)
                    continue
                run = run_train(
                    replace(cfg, lr=lr, aux_weight=w, seed=seed),
                    data,
                    progress,
                    RunOptions(checkpoint_dir=out / ".checkpoints", save_every=save_every),
                )
                write_result(path.parent, path.stem, run, tables=False, figure=False)
                floor += run.floor_s
                if progress:
                    last = {
                        e["domain"]: round(e["ppl"], 2) for e in run.evals if e["split"] == "test"
                    }
                    print(f"lr {lr:g} λ {w:g} seed {seed}: test ppl {last} ({run.wall_s:.0f} s)")
                runs.append(run)
    grid = _summarise(runs)
    chosen = choose_weights(grid)
    result = SweepResult(cfg.name, grid, chosen, table2(grid, chosen), runs, floor)
    tables = result.tables()
    write_result(out, "sweep", result, tables=False)  # sweep.json, sweep.png
    write_csv(out / "grid.csv", tables["grid"])
    write_csv(out / "table2.csv", tables["table2"])
    (out / "table2.md").write_text(result.markdown())
    return result


def _plot(grid: list[dict[str, Any]]) -> Any:
    """Test perplexity against λ at the last step, one panel per domain, one line per lr."""
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
        ax.set(xlabel="λ (aux weight)", ylabel=f"test perplexity at step {last} (± sd)", title=dom)
        ax.legend()
    return fig
