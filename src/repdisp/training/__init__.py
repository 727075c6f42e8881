"""Push-away training (§3.4, Table 2): the exact O(N·d) auxiliary loss, a Trainer that adds it,
the from-scratch GPT-2 recipe and the λ × lr sweep."""

from .loss import PushAwayLoss, PushAwayOutput, naive_dispersion
from .recipe import (
    DomainSpec,
    PreparedData,
    RunResult,
    TrainConfig,
    evaluate,
    load_config,
    prepare_data,
    train_run,
)
from .sweep import SweepResult, run_sweep
from .trainer import PushAwayTrainer

__all__ = [
    "DomainSpec",
    "PreparedData",
    "PushAwayLoss",
    "PushAwayOutput",
    "PushAwayTrainer",
    "RunResult",
    "SweepResult",
    "TrainConfig",
    "evaluate",
    "load_config",
    "naive_dispersion",
    "prepare_data",
    "run_sweep",
    "train_run",
]
