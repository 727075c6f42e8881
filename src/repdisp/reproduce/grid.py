"""The grid driver: every registered step over models x corpora, then models, then tasks.

``run(cfg, out, ...)`` writes ``out/config.json`` (the settings as run), then runs the steps of
``steps.STEPS`` that ``cfg`` enables, in this order: for each model, for each corpus, the "cell"
steps (registration order), then its "model" steps, then for each task of ``cfg["mc"]`` its
"task" steps; then the "grid" steps (once). A model is loaded once, at its first step, and
released (with the memoised extraction) after its last, so a grid holds one model at a time. With ``cfg["only"]`` (claim ids, ``--only``) only the
steps those claims read run (``claims.needed_steps``), and the page shows only their rows. The findings page (``page.findings``) is rewritten after
every step, so verdicts appear as they come out; the last rewrite records the wall time.

Models are loaded once per process by ``core.models.load_model(spec, cfg["device"], dtype,
trust_remote_code=..., allow_pickle=..., **model_args)``, where ``dtype`` is ``model_args``'s
``dtype`` when given, else ``cfg["dtype"]``. Returns the paths of findings.md and findings.html.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process first joins each cell's main extraction
(``memo.share_cells``: shards split over the ranks, gathered to rank 0, cached by each rank);
then the other ranks return (writing nothing) and rank 0 runs every step as one process would,
so the page and results are the same. The other steps' own forwards run on rank 0.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .claims import needed_steps
from .config import on_cell
from .memo import forget, share_cells
from .page import findings
from .steps import STEPS, Run


def loader(
    cfg: dict[str, Any],
    model_args: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """``spec -> LoadedModel`` with the run's device, dtype and loader options."""
    kwargs = dict(model_args or {})
    dtype = kwargs.pop("dtype", cfg["dtype"])

    def load(spec: str) -> Any:
        from ..core.models import load_model

        return load_model(
            spec,
            cfg["device"],
            dtype,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
            **kwargs,
        )

    return load


def run(
    cfg: dict[str, Any],
    out: str | Path,
    *,
    progress: bool = True,
    model_args: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> tuple[Path, Path]:
    """Run (or resume) the grid of ``cfg`` (``config.load_config``) into ``out``."""
    from ..core import distributed
    from ..io.results import write_json

    need = needed_steps(cfg)  # --only: the steps its rows read (None: all); checks the ids
    out = Path(out)
    t0 = time.perf_counter()
    dist = distributed.from_env()
    shared: dict[tuple[str, ...], tuple[float, float]] = {}  # (seconds, floor) per shared cell
    load = loader(cfg, model_args, trust_remote_code, allow_pickle)
    ctx = Run(cfg, out, load, progress and dist.is_main)
    on = [s for s in STEPS if s.enabled(cfg) and (need is None or s.name in need)]
    if dist.world_size > 1:  # torchrun: the cells' extractions shared, then rank 0 alone
        cells = [(m, d) for m in cfg["models"] for d in cfg["data"]]
        dist, created = distributed.setup_for(cfg["device"])
        try:
            shared = share_cells(ctx, cells if any(s.over == "cell" for s in on) else [], dist)
        finally:
            if created:
                distributed.teardown()
        if not dist.is_main:
            return out / "findings.md", out / "findings.html"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg)
    jobs: list[tuple[Any, tuple[Any, ...]]] = []
    for spec in cfg["models"]:  # one model's jobs together: it is loaded once, then released
        jobs += [
            (s, (spec, d))
            for d in cfg["data"]
            for s in on
            if s.over == "cell" and on_cell(cfg, s.when, d)  # a block's ``data`` list
        ]
        jobs += [(s, (spec,)) for s in on if s.over == "model"]
        jobs += [(s, (spec, mc)) for mc in cfg.get("mc") or [] for s in on if s.over == "task"]
    jobs += [(s, ()) for s in on if s.over == "grid"]
    last = {where[0]: i for i, (_, where) in enumerate(jobs) if where}
    for i, (s, where) in enumerate(jobs):
        seconds, floor = shared.pop(where, (0.0, 0.0))
        ctx.steps.started = time.perf_counter() - seconds
        ctx.steps.floor = floor
        s.fn(ctx, *where)
        findings(cfg, out)
        if where and last[where[0]] == i:  # the model's last job: free its weights and vectors
            forget()
            ctx.release(where[0])
    return findings(cfg, out, seconds=time.perf_counter() - t0)
