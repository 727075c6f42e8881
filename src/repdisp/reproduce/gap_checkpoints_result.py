"""The result file of the §3.2 checkpoints step (``reproduce/gap_checkpoints.py`` states the math).

Apart from the step so that building the CLI parser (which registers every claim) does not
import numpy through the result protocol; the reader finds this class by the file's ``type``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..io.results import Result


@dataclass
class GapCheckpoints(Result):
    """G of each checkpoint (output-embedding rows only), its accuracy (given) or domain
    perplexity (measured), and the exact rank test of G against accuracy (or −ppl)."""

    kind: ClassVar[str] = "gap-checkpoints"
    run_keys: ClassVar[tuple[str, ...]] = ("seconds", "gap_seconds", "train.wall_s")

    domain: str
    reference: str
    metric: str  # cosine: the paper's
    accuracy_kind: str  # "given" | "measured perplexity"
    checkpoints: list[dict[str, Any]]  # per checkpoint: name, model, G components, accuracy/ppl
    spearman: dict[str, Any]  # ranktest.spearman_exact of G vs accuracy (or −ppl)
    shared_tokenizer: bool
    train: dict[str, Any] | None = None  # the bundled from-scratch run that made them
    perplexity: dict[str, Any] | None = None  # the measurement's settings
    seconds: float = 0.0
    gap_seconds: float = 0.0  # reading G of every checkpoint (rows only)
    notes: list[str] = field(default_factory=list)

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"checkpoints": self.checkpoints}
