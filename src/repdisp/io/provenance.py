"""Provenance: what made a result, recorded by the library and completed by the writer.

Contract:

- ``record(result, models=, data=, seed=, **extra)`` notes on ``result.provenance`` the loaded
  models (``model_provenance``: name, content hash, device, dtype), the data (``data_provenance``:
  source, sha256 fingerprint of the exact token ids, shape) and the seed; repeated calls append.
- ``@recorded`` on a library entry point puts the call into ``provenance["call"]`` as Python that
  runs as written after ``import repdisp``: ``repdisp.NAME(...)`` for a top-level export, else the
  full module path (``repdisp.analyses.layers.layers(...)``); repdisp dataclass arguments (such as
  ``Sampling``) are spelled out by module path and fields. Objects without a source form are
  shown in angle brackets (``<LoadedModel NAME>``, ``<array (3, 4) float32>``): such a call names
  what was passed but cannot be rerun as is.
- ``provenance(result, command)`` is the block the writer stores: ``environment()`` (repdisp
  version and git commit, Python, torch, transformers, numpy), models, device and dtype of the
  first model, data, seed, the command line (``command_line`` while a command runs) and the call.
  It holds nothing that differs between two identical runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import inspect
import math
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .protocol import Result, _plain

_COMMAND_LINE: list[str] | None = None  # set by the CLI: the exact command of this process


def set_command_line(argv: list[str] | None) -> None:
    """Record the command line (``["repdisp", ...]``) that provenance blocks should name."""
    global _COMMAND_LINE
    _COMMAND_LINE = None if argv is None else [str(a) for a in argv]


@contextlib.contextmanager
def command_line(argv: list[str]) -> Iterator[None]:
    """``set_command_line(argv)`` while a command runs; the previous value afterwards, so a
    library call made later in the same process is not credited to the command."""
    before = _COMMAND_LINE
    set_command_line(argv)
    try:
        yield
    finally:
        set_command_line(before)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _git() -> dict[str, Any]:
    """Commit (and whether the tracked files differ from it) of the checkout repdisp runs from,
    when it runs from a git checkout; None otherwise."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return {"commit": commit or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def model_provenance(lm: Any) -> dict[str, Any]:
    """Name, content hash (the one the cache uses), device and dtype of a ``LoadedModel``."""
    return {
        "name": getattr(lm, "name", str(lm)),
        "identity": getattr(lm, "identity", None),
        "device": str(getattr(lm, "device", None)),
        "dtype": getattr(lm, "precision", None)
        or str(getattr(lm, "dtype", None)).replace("torch.", ""),
    }


def environment() -> dict[str, Any]:
    """repdisp version and git commit, Python, torch and transformers versions."""
    git = _git()
    return {
        "repdisp": getattr(sys.modules.get("repdisp"), "__version__", None) or _version("repdisp"),
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "numpy": np.__version__,
    }


def provenance(
    result: Any = None, command: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """The ``provenance`` block: environment, what the library recorded on ``result`` (models,
    data fingerprints, seed, API call) and the command line of this process."""
    prov = environment()
    recorded = dict(getattr(result, "provenance", None) or {})
    models = recorded.pop("models", None)
    prov["models"] = models or []
    if models:  # the first model's device and dtype, for the common one-model case
        prov["device"] = models[0].get("device")
        prov["dtype"] = models[0].get("dtype")
    else:
        prov["device"] = prov["dtype"] = None
    prov["data"] = recorded.pop("data", [])
    seed = recorded.pop("seed", getattr(result, "seed", None))
    prov["seed"] = seed if isinstance(seed, (int, type(None))) else _plain(seed)
    command = command if command is not None else _COMMAND_LINE
    prov["command"] = None if command is None else " ".join(_quote(a) for a in command)
    prov["call"] = recorded.pop("call", None)
    prov.update(_plain(recorded))
    prov.update(_plain(extra))
    return prov


def _quote(a: str) -> str:
    import shlex

    return shlex.quote(a)


def record(result: Any, *, models: Any = (), data: Any = (), seed: Any = None, **extra: Any) -> Any:
    """Note on ``result`` what made it: loaded models, data (``{"source", "fingerprint"}`` or
    Segments), seed. Repeated calls append models and data."""
    if not isinstance(result, Result):
        return result
    prov = result.provenance
    for lm in models if isinstance(models, (list, tuple)) else [models]:
        entry = dict(lm) if isinstance(lm, dict) else model_provenance(lm)
        if entry not in prov.setdefault("models", []):
            prov["models"].append(entry)
    for d in data if isinstance(data, (list, tuple)) else [data]:
        entry = data_provenance(d)
        if entry not in prov.setdefault("data", []):
            prov["data"].append(entry)
    if seed is not None:
        prov["seed"] = seed
    prov.update(extra)
    return result


def data_provenance(d: Any) -> dict[str, Any]:
    """``{"source", "fingerprint", "shape"}`` of a ``Segments`` (hash of its exact token ids), a
    token-id array, or a dict given as is."""
    if isinstance(d, dict):
        return d
    if hasattr(d, "fingerprint") and hasattr(d, "ids"):
        return {"source": d.source, "fingerprint": d.fingerprint, "shape": list(d.ids.shape)}
    arr = np.ascontiguousarray(np.asarray(d))
    import hashlib

    return {
        "source": None,
        "fingerprint": hashlib.sha256(arr.tobytes()).hexdigest()[:16],
        "shape": list(arr.shape),
    }


def note_call(result: Any, fn: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    """Note on ``result`` the call ``fn(*args, **kwargs)`` as ``@recorded`` would: how a command
    that runs the settings-object form of an entry point records the public keyword call that
    its settings amount to."""
    if isinstance(result, Result):
        result.provenance.setdefault("call", _call_text(fn, args, kwargs))
    return result


def settings_keywords(*settings: Any) -> dict[str, Any]:
    """The fields of settings dataclasses as keywords of the public call they amount to."""
    return {f.name: getattr(s, f.name) for s in settings for f in dataclasses.fields(s)}


def call_name(fn: Any) -> str:
    """How ``fn`` is reached after ``import repdisp``: ``repdisp.NAME`` when the package exports
    it under that name, else ``MODULE.QUALNAME``."""
    exports = getattr(sys.modules.get("repdisp"), "_EXPORTS", {})
    if fn.__module__ == f"repdisp.{exports.get(fn.__name__)}":
        return f"repdisp.{fn.__name__}"
    return f"{fn.__module__}.{fn.__qualname__}"


def _call_text(fn: Any, args: tuple, kwargs: dict) -> str:
    def show(v: Any) -> str:
        if hasattr(v, "identity") and hasattr(v, "model"):
            return f"<LoadedModel {getattr(v, 'name', '?')}>"
        if (
            dataclasses.is_dataclass(v)
            and not isinstance(v, type)
            and type(v).__module__.startswith("repdisp.")
        ):
            fields = [f for f in dataclasses.fields(v) if f.init]
            inner = ", ".join(f"{f.name}={show(getattr(v, f.name))}" for f in fields)
            return f"{type(v).__module__}.{type(v).__qualname__}({inner})"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{show(k)}: {show(x)}" for k, x in v.items()) + "}"
        if isinstance(v, Path):
            return repr(str(v))
        if isinstance(v, float) and not math.isfinite(v):
            return f"float('{v}')"
        if isinstance(v, (list, tuple)):
            inner = ", ".join(show(x) for x in v)
            return f"[{inner}]" if isinstance(v, list) else f"({inner}{',' if len(v) == 1 else ''})"
        if isinstance(v, np.ndarray):
            return f"<array {v.shape} {v.dtype}>"
        if callable(v) and not isinstance(v, type):
            return f"<{getattr(v, '__name__', 'callable')}>"
        text = repr(v)
        return text if len(text) <= 200 else text[:197] + "..."

    try:
        sig = inspect.signature(fn)
        bound = sig.bind_partial(*args, **kwargs)
        parts = []
        for k, v in bound.arguments.items():
            if sig.parameters[k].kind is inspect.Parameter.VAR_KEYWORD:  # **binning: as given
                parts += [f"{name}={show(x)}" for name, x in v.items()]
            else:
                parts.append(f"{k}={show(v)}")
    except TypeError:
        parts = [show(a) for a in args] + [f"{k}={show(v)}" for k, v in kwargs.items()]
    return f"{call_name(fn)}({', '.join(parts)})"


def recorded(fn: Any) -> Any:
    """Decorator for library entry points: the returned result's provenance names the call."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if isinstance(result, Result):
            result.provenance.setdefault("call", _call_text(fn, args, kwargs))
        return result

    return wrapper
