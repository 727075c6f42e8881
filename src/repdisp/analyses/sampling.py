"""Shared pieces of the binned §2 analyses: one selected bin (``BinPoint``) with both dispersion
modes, the correlations over bins, and labels. How segments are drawn and extracted
(``Sampling``) lives in ``core.sampling``.

``bin_points`` measures each selected bin exactly (Eq. 1 over the bin's segment vectors,
and the mean within-segment dispersion); ``correlate`` gives Pearson and Spearman over bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.geometry import dispersion
from ..core.stats import Correlation, correlation
from .binning import BinSelection

MODES = ("across", "within")
METHODS = ("pearson", "spearman")


def short_name(data: str) -> str:
    """A data source's label for legends: the file stem, or the name as given."""
    return Path(data).stem if ("/" in data or "." in data) and not data.startswith("hf:") else data


def model_label(name: str) -> str:
    """A model's label for plots: a folder's last component, or the name as given."""
    return Path(name).name if "/" in name else name


@dataclass
class BinPoint:
    """One selected bin: its index among all equal-count bins, size, mean perplexity, dispersions."""

    bin: int
    n: int
    mean_ppl: float
    across: float
    within: float


def bin_points(
    ppl: np.ndarray, vectors: np.ndarray, within: np.ndarray, sel: BinSelection
) -> list[BinPoint]:
    """Mean perplexity and both dispersions of each selected bin."""
    return [
        BinPoint(
            int(b), len(m), float(ppl[m].mean()), dispersion(vectors[m]), float(within[m].mean())
        )
        for b, m in zip(sel.chosen, sel.members, strict=True)
    ]


def correlate(
    points: list[BinPoint], reps: int = 2000, seed: int = 0
) -> dict[str, dict[str, Correlation]]:
    """Pearson and Spearman of bin mean perplexity vs each dispersion mode."""
    x = [p.mean_ppl for p in points]
    return {
        mode: {
            m: correlation(x, [getattr(p, mode) for p in points], m, reps, seed) for m in METHODS
        }
        for mode in MODES
    }
