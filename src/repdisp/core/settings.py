"""The binning and resampling settings of the binned §2 analyses (``Statistics``), beside
``core.sampling.Sampling`` (how segments are drawn and extracted).

``Statistics`` is the contract of ``ppl_vs_dispersion`` and ``layers``: Algorithm 1 with
K = ``n_bins`` bins of B = ``bin_size`` segments; ``bootstrap`` resamples of the K bins for the
bin-level correlation CIs; ``stats_reps`` segment bootstraps and ``permutations`` shuffles for
the segment-level statistics (both 0: none); a many-bins curve of ``curve_bins`` equal-count
bins; ``seed`` for every resampling; two-sided CIs at ``level``. It is frozen, built by keyword
and validated once when built (a bad value is a one-line ``RepdispError`` naming the CLI flag),
so code below the command line passes one object instead of seven numbers. Standard library
only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import RepdispError

SEED_MAX = 2**32 - 1


@dataclass(frozen=True, kw_only=True)
class Statistics:
    """How binned perplexity-vs-dispersion statistics are computed (see the module docstring)."""

    bin_size: int = 50
    n_bins: int = 10
    bootstrap: int = 2000
    stats_reps: int = 1000
    permutations: int = 1000
    curve_bins: int = 50
    seed: int = 0
    level: float = 0.95

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise RepdispError(what)

        for name in ("bin_size", "n_bins", "bootstrap", "stats_reps", "permutations"):
            value = getattr(self, name)
            need(
                isinstance(value, int) and not isinstance(value, bool),
                f"{name} must be an integer, got {value!r}",
            )
        need(self.bin_size >= 2, f"--bin-size must be at least 2 segments, got {self.bin_size}")
        need(
            self.n_bins >= 2,
            f"--bins must be at least 2 to span a perplexity range, got {self.n_bins}",
        )
        for flag, value in (
            ("--bootstrap", self.bootstrap),
            ("--stats-reps", self.stats_reps),
            ("--permutations", self.permutations),
        ):
            need(value >= 0, f"{flag} must be at least 0, got {value}")
        need(
            isinstance(self.curve_bins, int) and self.curve_bins >= 2,
            f"--curve-bins must be at least 2, got {self.curve_bins!r}",
        )
        need(
            isinstance(self.seed, int) and 0 <= self.seed <= SEED_MAX,
            f"--seed must be in 0..2**32-1, got {self.seed!r}",
        )
        need(
            isinstance(self.level, (int, float)) and 0 < self.level < 1,
            f"CI level must be in (0, 1), got {self.level!r}",
        )

    @classmethod
    def build(cls, stats: Statistics | None, seed: int, **fields_: Any) -> Statistics:
        """``stats`` with ``fields_`` replaced, or (``stats`` None) a new one seeded ``seed``:
        how the public entry points accept the older keywords (``bin_size=20, n_bins=5, ...``)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(fields_) - names)
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
        if stats is None:
            return cls(**({"seed": seed} | fields_))
        return replace(stats, **fields_) if fields_ else stats


@dataclass(frozen=True, kw_only=True)
class Loading:
    """How a model named by a string is loaded (``core.loading.load_model``): ``device``,
    ``dtype`` and whether a pickled checkpoint may be read. A model object passed in is used
    as it is. (``trust_remote_code`` travels with ``core.sampling.Sampling``.)"""

    device: str = "auto"
    dtype: str = "auto"
    allow_pickle: bool = False


@dataclass(frozen=True, kw_only=True)
class SeriesReading:
    """What ``ppl_vs_dispersion`` reads and bins by: one ``site`` with the across-segment
    ``pooling`` (last or mean); ``last_token``: bin by the last token's perplexity once per
    length in ``contexts`` (else by sequence perplexity at the sampling's ``seq_len``);
    ``per_segment``: keep one row per segment and series."""

    site: str = "final"
    pooling: str = "last"
    last_token: bool = False
    contexts: tuple[int, ...] | list[int] = (16, 64, 128, 256)
    per_segment: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in ("last", "mean"):
            raise RepdispError(f"across pooling must be last or mean, got {self.pooling!r}")
