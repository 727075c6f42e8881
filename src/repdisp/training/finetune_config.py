"""The settings of one fine-tuning run (``FinetuneConfig``), validated once when built.

``training.finetune.finetune`` reads every recipe setting from one of these: the optimisation
(``steps`` optimiser steps of ``batch_size`` x ``grad_accum`` segments of ``seq_len`` tokens,
AdamW at ``learning_rate`` with ``weight_decay``, linear schedule after ``warmup_steps``),
the method (``lora`` with rank ``lora_r``, alpha ``lora_alpha``, dropout ``lora_dropout``,
merged at the end; or ``full``), the data (the first ``train_fraction`` of the text, read with
``text_field`` and ``encoding_errors``), the seed, checkpoints every ``save_every`` steps (0:
none) and tracking (``report_to``; ``dispersion_every`` > 0 logs dispersion on
``dispersion_segments`` probe segments). The object is frozen and built by keyword; a bad value
is a one-line ``RepdispError`` naming the CLI flag.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ..core.errors import RepdispError

METHODS = ("lora", "full")


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """One fine-tuning recipe (see the module docstring)."""

    method: str = "lora"
    steps: int = 50
    learning_rate: float = 2e-4
    batch_size: int = 4
    seq_len: int = 128
    seed: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    train_fraction: float = 1.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_accum: int = 1
    save_every: int = 0
    report_to: str | list[str] = "none"
    dispersion_every: int = 0
    dispersion_segments: int = 32
    text_field: str = "text"
    encoding_errors: str = "strict"
    split: str | None = None  # of an ``hf:`` source (default ``test``)

    def __post_init__(self) -> None:
        from .checkpoints import check_save_every

        if self.method not in METHODS:
            raise RepdispError(f"unknown --method {self.method!r}; choose lora or full")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise RepdispError("--steps, --batch-size and --grad-accum must be at least 1")
        check_save_every(self.save_every)

    @classmethod
    def build(cls, config: FinetuneConfig | None, **settings: Any) -> FinetuneConfig:
        """``config`` (default: the defaults) with ``settings`` replaced: how ``finetune``
        accepts the keyword form ``finetune(model, data, out, steps=3, method="full")``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise TypeError(f"finetune() got an unexpected keyword argument {unknown[0]!r}")
        if config is None:
            return cls(**settings)
        return replace(config, **settings) if settings else config

    def recipe(self) -> dict[str, Any]:
        """The settings that name a resumable job (``training.checkpoints.open_work``'s spec)."""
        keep = (
            "method", "steps", "learning_rate", "batch_size", "seq_len", "seed", "lora_r",
            "lora_alpha", "lora_dropout", "warmup_steps", "weight_decay", "grad_accum",
            "save_every",
        )  # fmt: skip
        return {k: getattr(self, k) for k in keep}
