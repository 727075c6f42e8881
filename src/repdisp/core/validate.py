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


_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay",
)  # fmt: skip
_FRACTION = Rule(float, lo=0, hi=1, hi_open=True)
# GPT2Config keys a recipe may set under ``model:`` (vocabulary, positions and special tokens
# come from the tokenizer and block_size)
_MODEL_RULES = {
    "n_layer": Rule(int, lo=1),
    "n_embd": Rule(int, lo=1),
    "n_head": Rule(int, lo=1),
    "n_inner": Rule(int, lo=1, optional=True),
    "activation_function": Rule(str),
    "resid_pdrop": _FRACTION,
    "embd_pdrop": _FRACTION,
    "attn_pdrop": _FRACTION,
    "layer_norm_epsilon": Rule(float, lo=0, lo_open=True),
    "initializer_range": Rule(float, lo=0, lo_open=True),
    "scale_attn_weights": Rule(bool),
    "scale_attn_by_inverse_layer_idx": Rule(bool),
    "reorder_and_upcast_attn": Rule(bool),
    "tie_word_embeddings": Rule(bool),
}
_DOMAIN_RULES = {
    "name": Rule(str),
    "train": Rule(str),
    "text_field": Rule(str),
    "test": Rule(str, optional=True),
    "test_field": Rule(str),
    "val_fraction": _FRACTION,
    "test_fraction": _FRACTION,
    "max_chars": Rule(int, lo=1, optional=True),
}
_TRAIN_RULES = {
    "name": Rule(str),
    "tokenizer": Rule(str, optional=True),
    "vocab_size": Rule(int, lo=257),
    "block_size": Rule(int, lo=2),
    "batch_size": Rule(int, lo=1),
    "grad_accum": Rule(int, lo=1),
    "lr": Rule(float, lo=0, lo_open=True),
    "weight_decay": Rule(float, lo=0),
    "warmup_steps": Rule(int, lo=0),
    "scheduler": Rule(str, choices=_SCHEDULERS),
    "max_steps": Rule(int, lo=1),
    "eval_blocks": Rule(int, lo=1),
    "log_steps": Rule(int, lo=1),
    "seed": Rule(int, lo=0, hi=2**32 - 1),
    "aux_weight": Rule(float, lo=0),
    "aux_all_reduce": Rule(bool),
    "bf16": Rule(bool),
    "base_dir": Rule(str),
}
_TRAIN_LISTS = {  # key: (item rule, minimum length)
    "eval_steps": (Rule(int, lo=1), 0),
    "adam_betas": (Rule(float, lo=0, hi=1, hi_open=True), 2),
    "sweep_aux_weights": (Rule(float, lo=0), 1),
    "sweep_lrs": (Rule(float, lo=0, lo_open=True), 1),
    "sweep_seeds": (Rule(int, lo=0, hi=2**32 - 1), 1),
}


def check_train_config(where: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Check a flat ``train`` recipe mapping (``sweep:`` already spread into ``sweep_*`` keys)
    key by key; returns it with values converted (ints accepted where floats go). Unknown keys
    are the caller's check (the dataclass fields)."""
    out = dict(raw)

    def shown(key: str) -> str:
        return key.replace("sweep_", "sweep.", 1) if key.startswith("sweep_") else key

    for key, rule in _TRAIN_RULES.items():
        if key in out:
            out[key] = check(where, shown(key), out[key], rule)
    for key, (rule, min_len) in _TRAIN_LISTS.items():
        if key in out:
            out[key] = check_list(where, shown(key), out[key], rule, min_len)
    if "adam_betas" in out:
        if len(out["adam_betas"]) != 2:
            raise RepdispError(
                f"{where}: adam_betas must be two numbers, got {raw['adam_betas']!r}"
            )
        out["adam_betas"] = tuple(out["adam_betas"])
    model = out.get("model", {})
    if model is None:
        model = {}
    if not isinstance(model, dict):
        raise RepdispError(f"{where}: model must be a mapping of GPT2Config keys, got {model!r}")
    check_keys(f"{where}: model", model, _MODEL_RULES)
    out["model"] = {k: check(where, f"model.{k}", v, _MODEL_RULES[k]) for k, v in model.items()}
    m = out["model"]
    if m.get("n_embd", 768) % m.get("n_head", 12):
        raise RepdispError(f"{where}: model.n_embd must be a multiple of model.n_head")
    domains = out.get("domains")
    if not isinstance(domains, list) or not 1 <= len(domains) <= 2:
        raise RepdispError(
            f"{where}: domains must be a list of one domain (single) or two (cross), got "
            f"{len(domains) if isinstance(domains, list) else repr(domains)}"
        )
    checked = []
    for i, d in enumerate(domains):
        at = f"domains[{i}]"
        if not isinstance(d, dict):
            raise RepdispError(f"{where}: {at} must be a mapping (name, train, ...), got {d!r}")
        check_keys(f"{where}: {at}", d, _DOMAIN_RULES)
        for need in ("name", "train"):
            if need not in d:
                raise RepdispError(f"{where}: {at} needs a {need}")
        d = {k: check(where, f"{at}.{k}", v, _DOMAIN_RULES[k]) for k, v in d.items()}
        val, test = d.get("val_fraction", 0.05), d.get("test_fraction", 0.1)
        if d.get("test") is None and val + test >= 1:
            raise RepdispError(f"{where}: {at}: val_fraction + test_fraction must be below 1")
        checked.append(d)
    if len({d["name"] for d in checked}) < len(checked):
        raise RepdispError(f"{where}: the two domains need different names")
    out["domains"] = checked
    return out
