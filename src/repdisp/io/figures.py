"""Figures without pyplot: ``new_figure`` builds them, ``save_figure`` writes them as PNG.

Contract: ``new_figure`` returns a ``matplotlib.figure.Figure`` and its axes made without pyplot,
so no global backend is switched and nothing is registered with pyplot (safe in a notebook and in
a headless process). ``save_figure`` writes PNG at 150 dpi with a tight bounding box and no
``Software`` tag, atomically, so the same figure gives the same bytes; a figure made through
pyplot is closed after saving.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

from .files import _atomic_bytes


def new_figure(
    nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **subplots: Any
) -> tuple[Any, Any]:
    """A ``matplotlib.figure.Figure`` and its axes (``Figure.subplots``), made without pyplot: no
    global backend switch and nothing registered with pyplot. ``layout`` goes to the Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=subplots.pop("layout", None))
    return fig, fig.subplots(nrows, ncols, **subplots)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG (150 dpi, tight), atomically; pyplot figures are closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight", metadata={"Software": None})
    if "matplotlib.pyplot" in sys.modules:  # only figures made through pyplot are registered
        sys.modules["matplotlib.pyplot"].close(fig)
    return _atomic_bytes(Path(path), buf.getvalue())
