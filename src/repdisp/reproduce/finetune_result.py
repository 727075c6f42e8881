"""The result file of the Fig. 6 step (``reproduce/finetune_shift.py`` states the math).

Apart from the step so that building the CLI parser (which registers every claim) does not
import numpy through the result protocol; the reader finds this class by the file's ``type``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..io.results import Result


@dataclass
class FinetuneShift(Result):
    """Base vs LoRA vs full fine-tuned dispersion on held-out domain text (module docstring)."""

    kind: ClassVar[str] = "finetune-shift"
    run_keys: ClassVar[tuple[str, ...]] = ("seconds", "finetune_seconds")

    model: str
    data: str
    n_segments: int
    seq_len: int
    seeds: list[int]
    train_docs: int
    heldout_docs: int
    overlap_docs: int
    models: list[dict[str, Any]]  # per model: name, seed, dispersion, token_ppl
    contrasts: list[dict[str, Any]]  # per contrast: id, a, b, value, ci_low, ci_high, method
    finetunes: list[dict[str, Any]] = field(default_factory=list)  # per fine-tune: recipe, loss
    seconds: float = 0.0
    finetune_seconds: list[float | None] = field(default_factory=list)  # training wall time

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"models": self.models, "contrasts": self.contrasts}
