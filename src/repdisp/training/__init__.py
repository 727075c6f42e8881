"""Push-away training (§3.4, Table 2): the exact O(N·d) auxiliary loss, a Trainer that adds it,
the from-scratch GPT-2 recipe
(``config``, ``data``, ``run``) and the λ × lr sweep."""

from .config import DomainSpec, TrainConfig, load_config
from .data import PreparedData, prepare_data
from .loss import PushAwayLoss, PushAwayOutput, naive_dispersion
from .run import RunResult, evaluate_blocks, train_run
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
    "evaluate_blocks",
    "load_config",
    "naive_dispersion",
    "prepare_data",
    "run_sweep",
    "train_run",
]


def __getattr__(name: str):  # PEP 562: ``repdisp.PACKAGE.MODULE`` without importing it first
    import importlib
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
