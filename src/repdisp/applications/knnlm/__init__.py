"""kNN-LM (Khandelwal et al., 2020) with the key read at any site of the model (§3.3).

A datastore maps the site's vector at every position of a training text (the key) to the next
token (the value). At evaluation the same site's vector is the query; its k nearest keys give

    p_kNN(y) ∝ Σ_{neighbours j with value y} exp(-‖q - k_j‖² / T)
    p(y)     = λ·p_kNN(y) + (1 - λ)·p_LM(y)

Modules, in reading order: ``mixture`` (the two formulas), ``windows`` (token streams and sliding
windows), ``index`` (FAISS), ``datastore`` (build and open), ``evaluation`` (perplexities over the
λ × T grid), ``keys`` (the dispersion profile of candidate sites, Table 1) and ``select`` (does the
highest-dispersion key win?).
"""

from .datastore import BuildReport, Datastore, build_datastore
from .evaluation import KnnEval, SiteEval, evaluate_knnlm, plot_eval
from .index import FLAT_MAX_KEYS, build_index
from .keys import SITE_SETS, KeyProfile, KeyRow, key_rows, plot_profile, profile_keys
from .mixture import interpolate, knn_log_prob, perplexity
from .select import SelectReport, select_key
from .windows import chunk_windows, load_tokens, plan_windows

__all__ = [
    "FLAT_MAX_KEYS",
    "SITE_SETS",
    "BuildReport",
    "Datastore",
    "KeyProfile",
    "KeyRow",
    "KnnEval",
    "SelectReport",
    "SiteEval",
    "build_datastore",
    "build_index",
    "chunk_windows",
    "evaluate_knnlm",
    "interpolate",
    "key_rows",
    "knn_log_prob",
    "load_tokens",
    "perplexity",
    "plan_windows",
    "plot_eval",
    "plot_profile",
    "profile_keys",
    "select_key",
]


def __getattr__(name: str):  # PEP 562: ``repdisp.PACKAGE.MODULE`` without importing it first
    import importlib
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
