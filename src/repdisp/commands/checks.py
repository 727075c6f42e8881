"""argparse ``type=`` validators: a flag value out of range is refused while the command line is
parsed, before any model or data is loaded, with argparse's one line naming the flag
(``repdisp measure: error: argument --segments: must be at least 2, got 0``).

Each validator takes the string argparse received and returns the parsed value or raises
``argparse.ArgumentTypeError``. No imports beyond the standard library: parsing stays fast.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

SEED_MAX = 2**32 - 1  # the legacy numpy seeding (transformers.set_seed) takes up to here


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer ``>= low``."""

    def parse(text: str) -> int:
        value = _int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"int>={low}"
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def seed(text: str) -> int:
    """A seed: an integer in ``0 .. 2**32 - 1``."""
    value = _int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in 0..2**32-1, got {value}")
    return value


def float_in(low: float, high: float, low_open: bool = False, high_open: bool = False):
    """A finite number in the interval from ``low`` to ``high`` (ends open when asked)."""

    def parse(text: str) -> float:
        value = _float(text)
        if (
            value < low
            or value > high
            or (low_open and value == low)
            or (high_open and value == high)
        ):
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            raise argparse.ArgumentTypeError(
                f"must be in {left}{low:g}, {high:g}{right}, got {text}"
            )
        return value

    parse.__name__ = "number"
    return parse


unit_float = float_in(0.0, 1.0)  # a probability or weight: [0, 1]
fraction = float_in(0.0, 1.0, low_open=True)  # a share of something: (0, 1]


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def nonneg_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def comma_list(item: Callable[[str], Any], what: str, name: str) -> Callable[[str], list]:
    """A comma list of values, each accepted by ``item``; ``what`` names them in errors and
    ``name`` is the type shown by argparse."""

    def parse(text: str) -> list:
        parts = [x.strip() for x in text.split(",") if x.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a comma list of {what}, got {text!r}")
        try:
            return [item(x) for x in parts]
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{e} (in {text!r})") from None

    parse.__name__ = name
    return parse


def int_list(low: int = 1) -> Callable[[str], list[int]]:
    """A comma list of integers, each ``>= low``."""
    return comma_list(int_at_least(low), "integers", "int list")


def float_list(item: Callable[[str], float]) -> Callable[[str], list[float]]:
    """A comma list of numbers, each accepted by ``item``."""
    return comma_list(item, "numbers", "number list")


def nonempty(what: str) -> Callable[[str], str]:
    """A string that is not empty or blank (a path, a source, a name)."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"is empty: give {what}")
        return text

    parse.__name__ = "text"
    return parse
