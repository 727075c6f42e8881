"""Multiple-choice QA: task loaders (``tasks``), prompt formats (``prompts``) and
lm-evaluation-harness style scoring with the query embedding at any site (``scoring``)."""

from .prompts import FORMATS, MCPrompt, make_prompts
from .scoring import MCResult, encode_pair, evaluate_task, score
from .tasks import (
    LETTERS,
    TASKS,
    MCItem,
    default_format,
    load_arc,
    load_generic,
    load_mmlu,
    load_task,
)

__all__ = [
    "FORMATS",
    "LETTERS",
    "TASKS",
    "MCItem",
    "MCPrompt",
    "MCResult",
    "default_format",
    "encode_pair",
    "evaluate_task",
    "load_arc",
    "load_generic",
    "load_mmlu",
    "load_task",
    "make_prompts",
    "score",
]


def __getattr__(name: str):  # PEP 562: ``repdisp.PACKAGE.MODULE`` without importing it first
    import importlib
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
