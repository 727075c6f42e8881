"""Claim rows of the findings page: the registry of builders, and the rows of a run folder.

A claim row is a dict with ``claim`` (the paper's statement, section and figure), ``scope``,
``paper`` (the expected direction), ``result`` (this run's numbers), ``verdict`` (from
``verdict.py``; never written by hand) and ``command`` (the command line that reproduces it),
and optionally ``p`` (a p-value, which the page adjusts with Benjamini-Hochberg into ``q_bh``)
and ``n_to_decide``.

Adding a row (a new figure or table of the paper) is one builder function in the family module
that computes its result (``ppl``, ``layers``, ``knn``, ``mc``, ``gap``, or a new module imported
by the package's ``__init__``), decorated with ``@claim``, plus its config key (``config.py``):

    @claim(over="cell", reads=("ppl_vs_dispersion.json",), missing="ppl-vs-dispersion",
           ids=("fig3", "fig4"), steps=("ppl_step",))
    def fig3_rows(cfg, at, ppl) -> list[dict]: ...

``ids``: the claim ids its rows carry (each row's ``id``; ``repdisp reproduce --only ID[,ID]``
picks rows by them), ``steps``: the names of the step functions whose results it reads (what
``--only`` runs for it; empty: every step). Each row also carries ``figure`` (the paper's figure,
table or section it belongs to; the page groups rows by it).

``over`` is what the builder runs for, and its arguments after ``cfg``:

    "cell"   at = Where(spec, data, folder out/LABEL/STEM, scope "LABEL · STEM")
    "task"   at = Where(spec, mc,   folder out/LABEL/TASK, scope "LABEL · TASK")
    "grid"   at = the run folder (the builder reads what it needs; runs once, last)

then one parsed JSON document per file in ``reads`` (relative to ``at.folder``). When one of
them is absent the builder is not called and "SCOPE: MISSING" goes to the page's "Not finished
yet" list. ``when``: a config key that must be truthy (None: always); a cell builder whose
``when`` block has a ``data`` list runs only for those corpora (``config.on_cell``). ``figure``: (file, caption)
of a cell's figure, linked on the page when the file exists. Rows come out in grid
order: per model, its cells (per corpus, the cell builders in registration order), then its
tasks; the grid builders after all models.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import label, on_cell, segments, stem

OVERS = ("cell", "task", "grid")
Row = dict[str, Any]


@dataclass(frozen=True)
class Where:
    """Where a builder's results are: the model, the corpus (cells) or task (tasks)."""

    spec: str
    folder: Path
    scope: str
    data: str | None = None
    mc: dict[str, Any] | None = None


@dataclass(frozen=True)
class Claim:
    name: str
    over: str
    build: Callable[..., list[Row]]
    reads: tuple[str, ...] = ()
    missing: str = ""
    when: str | None = None
    figure: tuple[str, str] | None = None  # (file in the folder, caption) shown on the page
    ids: tuple[str, ...] = ()
    steps: tuple[str, ...] = ()

    def enabled(self, cfg: dict[str, Any]) -> bool:
        if cfg.get("only") and not set(self.ids) & set(cfg["only"]):
            return False
        return self.when is None or bool(cfg.get(self.when))


CLAIMS: list[Claim] = []


def claim(
    over: str,
    reads: tuple[str, ...] = (),
    missing: str = "",
    when: str | None = None,
    figure: tuple[str, str] | None = None,
    ids: tuple[str, ...] = (),
    steps: tuple[str, ...] = (),
) -> Callable[[Callable[..., list[Row]]], Callable[..., list[Row]]]:
    """Register a claim builder (see the module docstring)."""
    if over not in OVERS:
        raise ValueError(f"over must be one of {OVERS}, got {over!r}")

    def add(fn: Callable[..., list[Row]]) -> Callable[..., list[Row]]:
        c = Claim(
            fn.__name__, over, fn, tuple(reads), missing, when, figure, tuple(ids), tuple(steps)
        )
        CLAIMS.append(c)
        return fn

    return add


def claim_ids() -> list[str]:
    """Every registered claim id, in page order."""
    return [i for c in CLAIMS for i in c.ids]


def needed_steps(cfg: dict[str, Any]) -> set[str] | None:
    """The step names the rows of ``cfg["only"]`` need (None: no ``--only``, every step).
    An unknown id is a ``RepdispError`` naming the known ones."""
    only = cfg.get("only")
    if not only:
        return None
    from ..core.errors import RepdispError

    known = claim_ids()
    bad = [i for i in only if i not in known]
    if bad:
        raise RepdispError(
            f"--only: unknown claim id(s) {', '.join(bad)}; known: {', '.join(known)}"
        )
    from .steps import STEPS

    picked = [c for c in CLAIMS if set(c.ids) & set(only)]
    if any(not c.steps for c in picked):
        return {s.name for s in STEPS}
    return {s for c in picked for s in c.steps}


def claims(cfg: dict[str, Any], out: Path) -> tuple[list[Row], list[str]]:
    """Claim rows from the step results on disk (finished steps only) and the missing steps."""
    rows: list[Row] = []
    missing: list[str] = []
    active = [c for c in CLAIMS if c.enabled(cfg)]

    def take(c: Claim, at: Where) -> None:
        docs = [read(at.folder / f) for f in c.reads]
        if any(d is None for d in docs):
            missing.append(f"{at.scope}: {c.missing}")
        else:
            rows.extend(keep(c.build(cfg, at, *docs)))

    def keep(built: list[Row]) -> list[Row]:
        only = cfg.get("only")
        return [r for r in built if not only or r.get("id") in only]

    for spec in cfg["models"]:
        for data in cfg["data"]:
            folder = out / label(spec) / stem(data)
            at = Where(spec, folder, f"{label(spec)} · {stem(data)}", data=data)
            for c in (c for c in active if c.over == "cell"):
                if on_cell(cfg, c.when, data):  # the ``when`` block's ``data`` list
                    take(c, at)
        for mc in cfg.get("mc") or []:
            at = Where(spec, out / label(spec) / mc["task"], f"{label(spec)} · {mc['task']}", mc=mc)
            for c in (c for c in active if c.over == "task"):
                take(c, at)
    for c in (c for c in active if c.over == "grid"):
        rows.extend(keep(c.build(cfg, out)))
    return rows, missing


# ------------------------------------------------------------------------------ row helpers


def read(path: Path) -> Any:
    """A result's JSON, or None when it is absent or unreadable (a step not finished)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fmt(e: dict[str, Any], digits: int = 4) -> str:
    """An estimate as ``+v [+lo, +hi] (METHOD), p=..``: the interval's method (e.g. BCa) and
    the permutation p (else the exact/analytic one), printed at its floor as ``p<1/(R+1)``."""
    from ..core.permutation import format_p  # numpy: not at parser build

    p, perms = e.get("p_perm"), e.get("perms", 0)
    if p is None or not math.isfinite(p):
        p, perms = e.get("p_value"), 0
    ptxt = format_p(p, perms) if p is not None and math.isfinite(p) else ""
    how = f" ({e['method'].split(' ', 1)[0]})" if e.get("method") else ""  # e.g. (BCa)
    ci = f"[{e['ci_low']:+.{digits}f}, {e['ci_high']:+.{digits}f}]"
    return f"{e['value']:+.{digits}f} {ci}{how}{', ' + ptxt if ptxt else ''}"


def command(cfg: dict[str, Any], spec: str, data: str | None = None, extra: str = "") -> str:
    """The ``repdisp reproduce`` line that recomputes one cell (``extra``: more flags)."""
    parts = ["repdisp reproduce", f"--model {spec}"]
    if data:
        parts.append(f"--data {quote(public(data))}")
    parts += [f"--segments {segments(cfg, spec, data)}", f"--seq-len {cfg['seq_len']}"]
    parts += [f"--dtype {cfg['dtype']}", "--out DIR"]
    return " ".join(parts) + (f" {extra}" if extra else "")


def quote(text: str) -> str:
    """Shell-quote, but keep $REPDISP_SHARED_DATA expandable (double quotes)."""
    if text.startswith("$REPDISP_SHARED_DATA/"):
        return f'"{text}"' if any(c in text for c in " '\"`") else text
    return shlex.quote(text)


def public(path: str) -> str:
    """A data path as the page shows it: under $REPDISP_SHARED_DATA when it is there."""
    shared = os.environ.get("REPDISP_SHARED_DATA")
    if shared and path.startswith(shared.rstrip("/") + "/"):
        return "$REPDISP_SHARED_DATA/" + path[len(shared.rstrip("/")) + 1 :]
    return path
