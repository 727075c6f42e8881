"""The settings of the kNN-LM steps, built once (from the flags, or by the public keyword
functions) and passed down whole.

- ``BuildSettings``: how the datastore is filled and indexed (windows of ``context`` tokens
  every ``stride``, ``batch_size`` windows per pass, ``shard_windows`` per shard, the ``index``
  kind).
- ``EvalSettings``: how the held-out text is scored: the same windowing, ``k`` neighbours
  searched with ``nprobe`` probes, the mixture weight ``lmbda`` and ``temperature`` (with their
  grids, scored on the same text).
- ``Profiling``: the dispersion profile of ``select_key`` (``sites``, ``chunks`` of
  ``chunk_len`` tokens, ``seeds``, the extraction ``cache``), the two texts' labels and
  whether to show progress.

``BuildReport`` is what a build did (re-exported by ``datastore``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, kw_only=True)
class BuildSettings:
    """How ``build_datastore`` fills and indexes a datastore (module docstring)."""

    context: int = 512
    stride: int = 256
    batch_size: int = 4
    shard_windows: int = 64
    index: str = "auto"


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """How ``evaluate_knnlm`` scores a text (module docstring)."""

    k: int = 1024
    lmbda: float = 0.25
    temperature: float = 1.0
    lmbda_grid: list[float] | None = None
    temperature_grid: list[float] | None = None
    context: int = 512
    stride: int = 256
    batch_size: int = 4
    nprobe: int = 32


@dataclass(frozen=True, kw_only=True)
class Profiling:
    """The key profile and the labels of ``select_key`` (module docstring)."""

    sites: str = "final-block"
    chunks: int = 100
    seeds: int = 5
    chunk_len: int = 256
    train_source: str = ""
    eval_source: str = ""
    cache: bool | str | Path = True
    progress: bool = True


@dataclass(kw_only=True)
class BuildReport:
    """What ``build_datastore`` did: keys written, shards computed and reused, seconds."""

    folder: str
    n_tokens: int
    n_keys: int
    sites: list[str]
    shards_computed: int
    shards_reused: int
    forward_seconds: float
    write_seconds: float
    index: dict[str, dict[str, Any]]
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.n_keys / max(self.seconds, 1e-9)
