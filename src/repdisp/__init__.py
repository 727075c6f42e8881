"""repdisp: representation dispersion of causal language models.

import repdisp
repdisp.dispersion(X)                       # any (N, d) array or tensor, exact, O(N·d)
r = repdisp.measure(model="smollm2-135m", data="python-docs", segments=200, seq_len=256)
print(r.table())
"""

from .analyses.measure import MeasureResult, SiteDispersion, measure
from .core.corpus import Segments, load_texts, make_segments
from .core.errors import RepdispError
from .core.extract import Extraction, extract
from .core.geometry import (
    CosineStats,
    bootstrap_ci,
    cluster_distances,
    dispersion,
    mean_euclidean,
    mean_sq_euclidean,
    per_example_scores,
)
from .core.models import LoadedModel, load_model, prepare
from .io.results import Result, load_result, write_result

__version__ = "0.1.0"


def __getattr__(name: str):
    # imported on first use: the callback pulls in transformers' Trainer
    if name == "DispersionCallback":
        from .training.callback import DispersionCallback

        return DispersionCallback
    raise AttributeError(f"module 'repdisp' has no attribute {name!r}")


__all__ = [
    "CosineStats",
    "DispersionCallback",
    "Extraction",
    "LoadedModel",
    "MeasureResult",
    "RepdispError",
    "Result",
    "Segments",
    "SiteDispersion",
    "bootstrap_ci",
    "cluster_distances",
    "dispersion",
    "extract",
    "load_model",
    "load_result",
    "load_texts",
    "make_segments",
    "mean_euclidean",
    "mean_sq_euclidean",
    "measure",
    "per_example_scores",
    "prepare",
    "write_result",
]
