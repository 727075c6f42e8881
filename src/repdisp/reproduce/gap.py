"""The dispersion gap in the grid (§3.2): the step and its claim.

Step ``gap`` (per model, when ``cfg["gap"]``) writes ``out/LABEL/gap.json``:
``applications.gap.rank_by_gap([spec], gap.domain, reference=gap.reference)``, the gap G between
the output-embedding dispersion of domain tokens and of everyday tokens.

Claim (once per grid, after every model): the paper relates a larger G to higher accuracy on
the domain across checkpoints of one model family; one G per model with no accuracies cannot
test that, so the row lists each model's G and is inconclusive by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .claims import claim, read
from .config import label
from .steps import Run, step, write_result


@step(over="model", when="gap")
def gap_step(run: Run, spec: str) -> None:
    from ..applications.gap import rank_by_gap

    cfg, folder = run.cfg, run.folder(spec)
    params = {"model": spec} | {k: v for k, v in cfg["gap"].items() if k in ("domain", "reference")}
    if run.steps.done(folder, "gap", params):
        return
    res = rank_by_gap(
        [spec], cfg["gap"]["domain"], reference=cfg["gap"].get("reference", "everyday")
    )
    write_result(folder, "gap", res, figure=False)
    run.steps.finish(folder, "gap", params)
    run.say(f"[{label(spec)}] dispersion gap ({cfg['gap']['domain']}): done")


@claim(over="grid", when="gap", ids=("gap",), steps=("gap_step",))
def gap_rows(cfg: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """§3.2: one row over every model whose gap is done (none while no gap is)."""
    gaps = [(spec, read(out / label(spec) / "gap.json")) for spec in cfg["models"]]
    have = [(s, g) for s, g in gaps if g]
    if not have:
        return []
    vals = "; ".join(f"{label(s)} G={g['checkpoints'][0]['cosine']['gap']:.4f}" for s, g in have)
    row = {
        "id": "gap",
        "figure": "§3.2 Tables 3-4",
        "claim": "§3.2 a larger dispersion gap G (domain vs everyday tokens) goes with "
        "higher accuracy on the domain, across checkpoints",
        "scope": f"{len(have)} model(s), domain {cfg['gap']['domain']}",
        "paper": "positive rank correlation of G with accuracy across checkpoints",
        "result": vals,
        "verdict": "inconclusive (needs 3+ checkpoints sharing a tokenizer, with accuracies)",
        "command": "repdisp gap --model M1 --model M2 --model M3 --domain python "
        "--accuracy M1=ACC,M2=ACC,M3=ACC",
    }
    return [row]
