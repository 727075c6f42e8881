"""Validation of YAML job configs (``finetune --config``, ``train --config``): every fault is one
line naming the file and the key - not valid YAML (with its line), not a mapping, an unknown key,
a value of the wrong type (a string where a number goes, a float where an integer goes, ``true``
where a number goes) or out of range."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError


@dataclass(frozen=True)
class Rule:
    """What a key accepts: a type (``int``, ``float``, ``str``, ``bool``), bounds, choices."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded
    hi_open: bool = False
    choices: tuple[str, ...] | None = None
    optional: bool = False  # None allowed

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        name = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
        text = name[self.kind]
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            text += f" in {left}{self.lo:g}, {self.hi:g}{right}"
        elif self.lo is not None:
            text += f" {'>' if self.lo_open else '>='} {self.lo:g}"
        elif self.hi is not None:
            text += f" {'<' if self.hi_open else '<='} {self.hi:g}"
        return text


def check(where: str, key: str, value: Any, rule: Rule) -> Any:
    """``value`` converted to the rule's type (ints are accepted as floats), or a one-line error
    ``WHERE: KEY must be ..., got ...``."""
    if value is None and rule.optional:
        return None
    bad = RepdispError(f"{where}: {key} must be {rule.describe()}, got {value!r}")
    if rule.kind is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if rule.kind is str:
        if not isinstance(value, str) or (rule.choices and value not in rule.choices):
            raise bad
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad
    if rule.kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise bad
            value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise bad
    if rule.lo is not None and (value < rule.lo or (rule.lo_open and value == rule.lo)):
        raise bad
    if rule.hi is not None and (value > rule.hi or (rule.hi_open and value == rule.hi)):
        raise bad
    return value


def check_list(where: str, key: str, value: Any, rule: Rule, min_len: int = 1) -> list[Any]:
    """A YAML list whose every item follows ``rule`` (a single value is not a list)."""
    if not isinstance(value, list) or len(value) < min_len:
        raise RepdispError(
            f"{where}: {key} must be a list of at least {min_len} item(s), each "
            f"{rule.describe()}; got {value!r}"
        )
    return [check(where, f"{key}[{i}]", v, rule) for i, v in enumerate(value)]


def check_keys(where: str, mapping: dict[str, Any], known: Any) -> None:
    unknown = sorted(str(k) for k in set(mapping) - set(known))
    if unknown:
        raise RepdispError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is ``{}``), or a one-line error."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RepdispError(f"{what} {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RepdispError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise RepdispError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RepdispError(f"{what} {path} is not valid YAML ({line}{problem})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RepdispError(
            f"{what} {path} must be a mapping of keys to values, not a {type(raw).__name__}"
        )
    return raw
