"""The grid driver: every registered step over models x corpora, then models, then tasks.

``run(cfg, out, ...)`` writes ``out/config.json`` (the settings as run), then runs the steps of
``steps.STEPS`` that ``cfg`` enables, in this order: for each model, for each corpus, the "cell"
steps (registration order); then for each model the "model" steps; then for each model, for each
task of ``cfg["mc"]``, the "task" steps; then the "grid" steps (once). With ``cfg["only"]`` (claim ids, ``--only``) only the
steps those claims read run (``claims.needed_steps``), and the page shows only their rows. The findings page (``page.findings``) is rewritten after
every step, so verdicts appear as they come out; the last rewrite records the wall time.

Models are loaded once per process by ``core.models.load_model(spec, cfg["device"], dtype,
trust_remote_code=..., allow_pickle=..., **model_args)``, where ``dtype`` is ``model_args``'s
``dtype`` when given, else ``cfg["dtype"]``. Returns the paths of findings.md and findings.html.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .claims import needed_steps
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
    from ..io.results import write_json

    need = needed_steps(cfg)  # --only: the steps its rows read (None: all); checks the ids
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg)
    t0 = time.perf_counter()
    ctx = Run(cfg, out, loader(cfg, model_args, trust_remote_code, allow_pickle), progress)
    on = [s for s in STEPS if s.enabled(cfg) and (need is None or s.name in need)]
    jobs: list[tuple[Any, tuple[Any, ...]]] = []
    for spec in cfg["models"]:
        jobs += [(s, (spec, d)) for d in cfg["data"] for s in on if s.over == "cell"]
    for spec in cfg["models"]:
        jobs += [(s, (spec,)) for s in on if s.over == "model"]
    for spec in cfg["models"]:
        jobs += [(s, (spec, mc)) for mc in cfg.get("mc") or [] for s in on if s.over == "task"]
    jobs += [(s, ()) for s in on if s.over == "grid"]
    for s, where in jobs:
        ctx.steps.started = time.perf_counter()
        ctx.steps.floor = 0.0
        s.fn(ctx, *where)
        findings(cfg, out)
    return findings(cfg, out, seconds=time.perf_counter() - t0)
