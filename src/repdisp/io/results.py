"""Writing results: JSON, CSV and PNG files into an output folder, the same way for every command."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np


def _plain(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return _plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write a dataclass/dict/list (numpy values included) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(obj), indent=2) + "\n")
    return path


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write a list of flat dicts as CSV with the union of their keys as header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(_plain(rows))
    return path


def new_figure(
    nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **subplots: Any
) -> tuple[Any, Any]:
    """A ``matplotlib.figure.Figure`` and its axes (``Figure.subplots``), made without pyplot: no
    global backend switch and nothing registered with pyplot. ``layout`` goes to the Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=subplots.pop("layout", None))
    return fig, fig.subplots(nrows, ncols, **subplots)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG (150 dpi, tight) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path
