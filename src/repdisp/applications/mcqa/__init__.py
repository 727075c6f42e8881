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
