"""repdisp: representation dispersion of causal language models.

import repdisp
repdisp.dispersion(X)                       # any (N, d) array or tensor, exact, O(N·d)
r = repdisp.measure(model="smollm2-135m", data="python-docs", segments=200, seq_len=256)
print(r.table())

Names are imported on first use (PEP 562), so ``import repdisp`` and the CLI start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "MeasureResult": "analyses.measure",
    "SiteDispersion": "analyses.measure",
    "measure": "analyses.measure",
    "Segments": "core.corpus",
    "load_texts": "core.corpus",
    "make_segments": "core.corpus",
    "RepdispError": "core.errors",
    "Extraction": "core.extract",
    "extract": "core.extract",
    "CosineStats": "core.geometry",
    "bootstrap_ci": "core.bootstrap",
    "cluster_distances": "core.geometry",
    "dispersion": "core.geometry",
    "mean_euclidean": "core.geometry",
    "mean_sq_euclidean": "core.geometry",
    "per_example_scores": "core.geometry",
    "LoadedModel": "core.models",
    "as_loaded": "core.models",
    "load_model": "core.models",
    "prepare": "core.models",
    "Result": "io.results",
    "load_result": "io.results",
    "write_result": "io.results",
    # the callback pulls in transformers' Trainer
    "DispersionCallback": "training.callback",
    "CSVLogger": "training.csvlog",
}

__all__ = sorted(_EXPORTS)
# subpackages reachable as attributes after a bare ``import repdisp``, so that a recorded call
# such as ``repdisp.analyses.layers.layers(...)`` runs as written
_PACKAGES = ("core", "io", "analyses", "applications", "training", "commands")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _PACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'repdisp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
