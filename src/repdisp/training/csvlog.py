"""A CSV tracker for the ``transformers`` Trainer: every logged scalar as one row.

``CSVLogger(path)`` is a ``TrainerCallback`` whose ``on_log`` appends one row
``step,name,value`` per numeric entry of the logged dict (booleans and strings are left out),
with the names exactly as logged: no ``train/`` or ``eval/`` rewriting, so the Trainer's
``loss``, ``eval_loss`` and ``DispersionCallback``'s ``dispersion/<site>`` and
``eval_dispersion/<site>`` land as they are named. The long format keeps one file valid when
different steps log different keys. The header is written when the file is new or empty; rows
are appended and flushed at each log, so a crashed run keeps what it logged. Only the
world-process-zero rank writes.
"""

from __future__ import annotations

import csv
import numbers
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

HEADER = ("step", "name", "value")


class CSVLogger(TrainerCallback):
    """Append every scalar the Trainer logs to ``path`` as ``step,name,value`` rows.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from types import SimpleNamespace
    >>> from repdisp import CSVLogger
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "log.csv"
    >>> state = SimpleNamespace(global_step=3, is_world_process_zero=True)
    >>> CSVLogger(path).on_log(None, state, None, logs={"loss": 2.5, "dispersion/final": 0.25})
    >>> print(path.read_text().strip())
    step,name,value
    3,loss,2.5
    3,dispersion/final,0.25
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        rows = [
            (state.global_step, k, float(v))
            for k, v in logs.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool)
        ]
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(HEADER)
            w.writerows(rows)


def read_csv_log(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{name: [(step, value), ...]}`` from a ``CSVLogger`` file, in file order."""
    out: dict[str, list[tuple[int, float]]] = {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["name"], []).append((int(row["step"]), float(row["value"])))
    return out
