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
    """Read a YAML recipe; ``overrides`` (None values ignored) replace top-level keys."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RepdispError(f"config {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    sweep = raw.pop("sweep", None) or {}
    if not isinstance(sweep, dict):
        raise RepdispError(f"config {path}: sweep must be a mapping (aux_weights, lrs, seeds)")
    raw.update({f"sweep_{k}": v for k, v in sweep.items()})
    raw.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RepdispError(f"config {path}: unknown key(s) {unknown}; known: {sorted(known)}")
    doms = raw.get("domains") or []
    if not 1 <= len(doms) <= 2:
        raise RepdispError(
            f"config {path}: give one domain (single) or two (cross), not {len(doms)}"
        )
    try:
        raw["domains"] = [DomainSpec(**d) for d in doms]
        cfg = TrainConfig(**{"base_dir": str(path.resolve().parent), **raw})
    except TypeError as e:
        raise RepdispError(f"config {path}: {e}") from None
    for k in ("lr", "weight_decay", "aux_weight"):
        setattr(cfg, k, float(getattr(cfg, k)))
    cfg.sweep_lrs = [float(x) for x in cfg.sweep_lrs]
    cfg.sweep_aux_weights = [float(x) for x in cfg.sweep_aux_weights]
    if cfg.batch_size % cfg.grad_accum:
        raise RepdispError(f"batch_size {cfg.batch_size} is not a multiple of grad_accum")
    return cfg


def _resolve(cfg: TrainConfig, source: str) -> str:
    if source in BUILTIN_SOURCES or source.startswith("hf:") or Path(source).is_absolute():
        return source
    return str(Path(cfg.base_dir) / source)
