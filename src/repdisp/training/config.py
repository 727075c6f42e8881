"""A from-scratch GPT-2 training recipe (Table 2): the YAML config and its domains.

A run trains a randomly initialised GPT-2 on one domain (single-domain loss) or two (cross-domain
loss between them); ``sweep:`` holds the λ × lr × seed grid. Relative data paths are resolved
against the config file's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..core.corpus import BUILTIN_SOURCES
from ..core.errors import RepdispError
from ..core.validate import check_keys, check_train_config, read_yaml_mapping


@dataclass
class DomainSpec:
    """One text domain: a training source, and a test source or a held-out test fraction.

    ``text_field`` may join fields with ``+`` (``prompt+canonical_solution``)."""

    name: str
    train: str
    text_field: str = "text"
    test: str | None = None
    test_field: str = "text"
    val_fraction: float = 0.05
    test_fraction: float = 0.1
    max_chars: int | None = None


@dataclass
class TrainConfig:
    """A training recipe (YAML keys = field names; ``sweep:`` holds the grid)."""

    name: str
    domains: list[DomainSpec]
    model: dict[str, Any] = field(default_factory=dict)  # GPT2Config keyword arguments
    tokenizer: str | None = None  # folder of a HF tokenizer; None = train a byte-level BPE
    vocab_size: int = 8192
    block_size: int = 512
    batch_size: int = 64  # global: per device x processes x accumulation
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    scheduler: str = "cosine"
    max_steps: int = 1000
    eval_steps: list[int] = field(default_factory=lambda: [500, 1000])  # + always max_steps
    eval_blocks: int = 256
    log_steps: int = 10
    seed: int = 0
    aux_weight: float = 0.0
    aux_all_reduce: bool = True
    bf16: bool = False
    sweep_aux_weights: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 0.5, 1.0])
    sweep_lrs: list[float] = field(default_factory=lambda: [1e-3, 7e-4, 5e-4])
    sweep_seeds: list[int] = field(default_factory=lambda: [0])
    base_dir: str = "."  # relative data paths are resolved against the config file's folder

    @property
    def mode(self) -> str:
        return "cross" if len(self.domains) == 2 else "single"


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a YAML recipe; ``overrides`` (None values ignored) replace top-level keys. Every key
    is checked (``core.validate``: types, ranges, unknown keys); a fault is one error line
    naming the file and the key."""
    path = Path(path)
    where = f"config {path}"
    raw = read_yaml_mapping(path, "config")
    sweep = raw.pop("sweep", None) or {}
    if not isinstance(sweep, dict):
        raise RepdispError(f"{where}: sweep must be a mapping (aux_weights, lrs, seeds)")
    check_keys(f"{where}: sweep", sweep, ("aux_weights", "lrs", "seeds"))
    raw.update({f"sweep_{k}": v for k, v in sweep.items()})
    raw.update({k: v for k, v in overrides.items() if v is not None})
    check_keys(where, raw, {f.name for f in fields(TrainConfig)})
    if "name" not in raw:
        raise RepdispError(f"{where}: needs a name")
    raw = check_train_config(where, raw)
    raw["domains"] = [DomainSpec(**d) for d in raw["domains"]]
    cfg = TrainConfig(**{"base_dir": str(path.resolve().parent), **raw})
    if cfg.batch_size % cfg.grad_accum:
        raise RepdispError(
            f"{where}: batch_size {cfg.batch_size} is not a multiple of grad_accum {cfg.grad_accum}"
        )
    return cfg


def _resolve(cfg: TrainConfig, source: str) -> str:
    if source in BUILTIN_SOURCES or source.startswith("hf:") or Path(source).is_absolute():
        return source
    return str(Path(cfg.base_dir) / source)
