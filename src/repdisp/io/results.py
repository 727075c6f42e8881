"""Result files and the result protocol shared by every analysis, application and training run.

The protocol (``Result``, a mixin for result dataclasses)::

    table()     plain text for the terminal
    tables()    {name: [row dict, ...]}: the result's tables, first one the main one
    figure()    a matplotlib ``Figure`` (built with ``matplotlib.figure.Figure``: no pyplot state,
                no backend switch), or None
    to_dict()   plain JSON-able values
    to_frame()  a pandas DataFrame of one of ``tables()`` (the first by default)
    headline()  the one-line answer a report opens with (what, value, CI, significant), or None

Library functions return results and write nothing; commands call ``write_result``, the one
writer, which puts ``NAME.json`` (the result, its ``provenance`` and a separate ``run`` block),
``NAME.csv`` / ``NAME_<table>.csv`` (``tables()``) and ``NAME.png`` (``figure()``) into a folder.
Every file is written atomically (``core.shards.atomic_write``). The JSON is strict: a non-finite
float becomes ``null`` and a ``notes`` entry names its key, its value and why it is not finite.
Everything that differs between two identical runs (wall time, date, host) lives in ``run``, so
two identical runs give files that are equal byte for byte once ``run`` is removed.
``load_result(path)`` reads any result file back into its type (or a ``GenericResult``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import importlib
import importlib.metadata
import inspect
import io
import json
import math
import platform
import socket
import subprocess
import sys
import time
import types
import typing
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.errors import RepdispError
from ..core.shards import atomic_write

SCHEMA = 1
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


# ---------------------------------------------------------------------------------------------
# plain values and strict JSON


def _plain(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return _plain(obj.to_dict() if isinstance(obj, Result) else asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _finite(obj: Any, path: str, notes: list[dict[str, Any]], explain: Any) -> Any:
    """``obj`` with every non-finite float replaced by None; one note per replaced value."""
    if isinstance(obj, float) and not math.isfinite(obj):
        value = "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
        why = explain(path, obj) if explain else None
        notes.append(
            {
                "key": path,
                "value": value,
                "why": why or "not a finite number; JSON has no NaN or infinity, written as null",
            }
        )
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, f"{path}.{k}" if path else k, notes, explain) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v, f"{path}[{i}]", notes, explain) for i, v in enumerate(obj)]
    return obj


def strict_json(obj: Any, explain: Any = None) -> tuple[Any, list[dict[str, Any]]]:
    """Plain, strictly JSON-able copy of ``obj`` and the notes on the non-finite values replaced."""
    notes: list[dict[str, Any]] = []
    return _finite(_plain(obj), "", notes, explain), notes


def _dumps(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n").encode()


def _atomic_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data))
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write a dataclass/dict/list (numpy values included) as indented strict JSON, atomically;
    non-finite numbers become null (the caller's ``write_result`` records why)."""
    doc, _ = strict_json(obj)
    return _atomic_bytes(Path(path), _dumps(doc))


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(_plain(rows))
    return buf.getvalue().encode()


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write a list of flat dicts as CSV with the union of their keys as header, atomically."""
    return _atomic_bytes(Path(path), _csv_bytes(rows))


def new_figure(
    nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **subplots: Any
) -> tuple[Any, Any]:
    """A ``matplotlib.figure.Figure`` and its axes (``Figure.subplots``), made without pyplot: no
    global backend switch and nothing registered with pyplot. ``layout`` goes to the Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=subplots.pop("layout", None))
    return fig, fig.subplots(nrows, ncols, **subplots)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG (150 dpi, tight), atomically; pyplot figures are closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight", metadata={"Software": None})
    if "matplotlib.pyplot" in sys.modules:  # only figures made through pyplot are registered
        sys.modules["matplotlib.pyplot"].close(fig)
    return _atomic_bytes(Path(path), buf.getvalue())


# ---------------------------------------------------------------------------------------------
# the protocol


_REGISTRY: dict[str, type] = {}


class Result:
    """Mixin of the result protocol for result dataclasses (see the module docstring).

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> from repdisp import Result
    >>> @dataclass
    ... class Scores(Result):
    ...     model: str
    ...     rows: list
    >>> r = Scores("m", [{"site": "final", "dispersion": 0.5}, {"site": "embed", "dispersion": 0.2}])
    >>> r.to_frame()["dispersion"].tolist()
    [0.5, 0.2]
    >>> print(r.table())
    rows
    site   dispersion
    final  0.5
    embed  0.2
    <BLANKLINE>
    summary
    model
    m

    Class attributes: ``kind`` names the file kind (``load_result`` maps it back to the class);
    ``run_keys`` are the fields that vary between identical runs (timings; ``a.b`` for a nested
    one), written into the ``run`` block instead of the result."""

    kind: ClassVar[str] = ""
    run_keys: ClassVar[tuple[str, ...]] = ("seconds",)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.__dict__.get("kind"):
            _REGISTRY[cls.kind] = cls

    # -- values ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _plain({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """The result from ``to_dict()`` output (extra keys such as ``provenance`` ignored)."""
        return build(cls, d)

    # -- tables ------------------------------------------------------------------------------
    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """Default: a one-row ``summary`` of the scalar fields, plus one table per field that is
        a list of records (dataclasses or dicts)."""
        d = self.to_dict()
        out: dict[str, list[dict[str, Any]]] = {}
        summary = {k: v for k, v in d.items() if _scalar(v) and k not in self.run_keys}
        lists = {
            k: v
            for k, v in d.items()
            if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
        }
        for k, v in lists.items():
            out[k] = [{c: x for c, x in row.items() if _scalar(x)} for row in v]
        if summary:
            out = {"summary": [summary]} | out if not out else out | {"summary": [summary]}
        return out

    def table(self) -> str:
        """Default text: every table as aligned columns."""
        return "\n\n".join(f"{name}\n{text_table(rows)}" for name, rows in self.tables().items())

    def to_frame(self, name: str | None = None) -> Any:
        """One of ``tables()`` as a pandas DataFrame (the first, the main one, by default)."""
        import pandas as pd

        tables = self.tables()
        if not tables:
            return pd.DataFrame()
        if name is None:
            name = next(iter(tables))
        if name not in tables:
            raise RepdispError(f"no table {name!r}; have {', '.join(tables)}")
        return pd.DataFrame(tables[name])

    # -- figure, report, provenance -------------------------------------------------------------
    def figure(self) -> Any:
        return None

    def headline(self) -> dict[str, Any] | None:
        """``{"what", "answer", "value", "ci", "significant"}`` for a report card, or None."""
        return None

    def explain_nonfinite(self, key: str, value: float) -> str | None:
        """Why the value at ``key`` may be infinite or NaN (written into the file's notes)."""
        last = key.rsplit(".", 1)[-1]
        if math.isnan(value) and last in ("ci_low", "ci_high"):
            return "no bootstrap resample had two distinct values (too few bins or segments)"
        if math.isnan(value) and last in ("r", "p_value"):
            return "correlation undefined: one of the two variables is constant"
        if math.isnan(value) and last == "sem":
            return "standard error undefined: a single value"
        return None

    @property
    def provenance(self) -> dict[str, Any]:
        """What the library knew when it made the result (models, data fingerprints, seed, call);
        ``write_result`` completes it with versions and the command line."""
        prov = self.__dict__.get("_provenance")
        if prov is None:
            prov = {}
            object.__setattr__(self, "_provenance", prov)
        return prov


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def text_table(rows: list[dict[str, Any]], limit: int = 40) -> str:
    """Rows as left-aligned text columns (floats with 6 significant digits)."""
    if not rows:
        return "(empty)"
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]

    def fmt(v: Any) -> str:
        return f"{v:.6g}" if isinstance(v, float) else "" if v is None else str(v)

    cells = [[fmt(r.get(k)) for k in keys] for r in rows[:limit]]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more rows")
    return "\n".join(lines)


def build(tp: Any, value: Any) -> Any:
    """``value`` (plain JSON data) converted to the annotated type ``tp``: dataclasses (nested),
    lists, dicts, tuples, optionals and numpy arrays."""
    if value is None:
        return None
    if isinstance(tp, str):
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        for opt in options:
            try:
                return build(opt, value)
            except (TypeError, ValueError, KeyError):
                continue
        return value
    if tp is np.ndarray:
        return np.asarray(value)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"{tp.__name__} needs a mapping, got {type(value).__name__}")
        custom = tp.__dict__.get("from_dict")
        if custom is not None and not _is_default_from_dict(tp):
            return tp.from_dict(value)
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        kwargs = {k: build(hints.get(k, Any), v) for k, v in value.items() if k in fields}
        obj = tp(**kwargs)
        for f in dataclasses.fields(tp):  # init=False fields that were written
            if not f.init and f.name in value:
                object.__setattr__(obj, f.name, build(hints.get(f.name, Any), value[f.name]))
        return obj
    if origin in (list, typing.List):  # noqa: UP006
        (arg,) = typing.get_args(tp) or (Any,)
        return [build(arg, v) for v in value]
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(build(args[0], v) for v in value)
        return (
            tuple(build(a, v) for a, v in zip(args, value, strict=False)) if args else tuple(value)
        )
    if origin is dict:
        _, arg = typing.get_args(tp) or (Any, Any)
        return {k: build(arg, v) for k, v in value.items()}
    return value


def _is_default_from_dict(tp: type) -> bool:
    fn = tp.__dict__.get("from_dict")
    return isinstance(fn, classmethod) and fn.__func__ is Result.__dict__["from_dict"].__func__


# ---------------------------------------------------------------------------------------------
# provenance


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


def _call_text(fn: Any, args: tuple, kwargs: dict) -> str:
    def show(v: Any) -> str:
        if hasattr(v, "identity") and hasattr(v, "model"):
            return f"<LoadedModel {getattr(v, 'name', '?')}>"
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
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
        parts = [f"{k}={show(v)}" for k, v in bound.arguments.items()]
    except TypeError:
        parts = [show(a) for a in args] + [f"{k}={show(v)}" for k, v in kwargs.items()]
    return f"repdisp.{fn.__name__}({', '.join(parts)})"


def recorded(fn: Any) -> Any:
    """Decorator for library entry points: the returned result's provenance names the call."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if isinstance(result, Result):
            result.provenance.setdefault("call", _call_text(fn, args, kwargs))
        return result

    return wrapper


# ---------------------------------------------------------------------------------------------
# the writer and the reader


_MISSING = object()


def _pop_path(d: dict[str, Any], key: str) -> Any:
    """Remove ``a.b.c`` from nested dicts and return it (``_MISSING`` when absent)."""
    *parents, last = key.split(".")
    for part in parents:
        d = d.get(part) if isinstance(d, dict) else None
    return d.pop(last) if isinstance(d, dict) and last in d else _MISSING


def _put_path(d: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        d = d.get(part) if isinstance(d, dict) else None
    if isinstance(d, dict):
        d[last] = value


def result_document(
    result: Any, *, command: list[str] | None = None, run: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON document of ``result``: its fields, ``notes``, ``provenance``, ``run``."""
    if isinstance(result, Result):
        body = result.to_dict()
        run_keys = result.run_keys
        explain = result.explain_nonfinite
        kind, typename = result.kind, f"{type(result).__module__}.{type(result).__qualname__}"
    else:
        body = _plain(result)
        run_keys, explain, kind, typename = ("seconds",), None, None, None
    if not isinstance(body, dict):
        body = {"value": body}
    timing = {k: v for k in run_keys if (v := _pop_path(body, k)) is not _MISSING}
    doc: dict[str, Any] = {"kind": kind, "type": typename, "schema": SCHEMA}
    doc |= body
    doc, notes = strict_json(doc, explain)
    # a result with notes of its own (strings) keeps them first; the writer's notes are dicts
    doc["notes"] = list(doc.get("notes") or []) + notes
    doc["provenance"], pnotes = strict_json(provenance(result, command))
    doc["run"], _ = strict_json(
        {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": socket.gethostname(),
            **timing,
            **(run or {}),
        }
    )
    return doc


def write_result(
    out_dir: str | Path,
    name: str,
    result: Any,
    *,
    tables: bool | dict[str, list[dict[str, Any]]] = True,
    figure: bool | Any = True,
    command: list[str] | None = None,
    run: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> list[Path]:
    """Write ``result`` into ``out_dir``: ``NAME.json`` (fields, notes, provenance, run),
    ``NAME.csv`` and ``NAME_<table>.csv`` from ``tables()`` (or the given dict), ``NAME.png``
    from ``figure()`` (or the given figure). Returns the paths written, the JSON first.

    ``overwrite=False`` refuses to replace an existing ``NAME.json``.

    Examples
    --------
    >>> import json, tempfile
    >>> import repdisp
    >>> from repdisp.io.results import GenericResult
    >>> folder = tempfile.mkdtemp()
    >>> doc = {"model": "m", "rows": [{"x": 1.0}, {"x": float("inf")}]}
    >>> paths = repdisp.write_result(folder, "demo", GenericResult(doc))
    >>> [p.name for p in paths]
    ['demo.json', 'demo.csv', 'demo_summary.csv']
    >>> saved = json.loads(paths[0].read_text())
    >>> saved["rows"][1], saved["notes"][0]["key"], sorted(saved["run"])
    ({'x': None}, 'rows[1].x', ['date', 'host'])
    """
    out = Path(out_dir)
    path = out / f"{name}.json"
    if not overwrite and path.exists():
        raise RepdispError(f"{path} exists: choose another --out or pass --overwrite")
    paths = [_atomic_bytes(path, _dumps(result_document(result, command=command, run=run)))]
    if tables is True:
        tables = result.tables() if isinstance(result, Result) else {}
    for i, (tname, rows) in enumerate((tables or {}).items()):
        if rows:
            paths.append(
                write_csv(out / (f"{name}.csv" if i == 0 else f"{name}_{tname}.csv"), rows)
            )
    fig = result.figure() if figure is True and isinstance(result, Result) else figure
    if fig is not None and fig is not False:
        paths.append(save_figure(fig, out / f"{name}.png"))
    return paths


def write_segments(out_dir: str | Path, name: str, rows: list[dict[str, Any]]) -> Path:
    """Per-segment rows as ``NAME_segments.parquet`` (one column per key), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    table = pa.table({k: [r.get(k) for r in rows] for k in keys})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return _atomic_bytes(Path(out_dir) / f"{name}_segments.parquet", buf.getvalue())


@dataclasses.dataclass
class GenericResult(Result):
    """A result file of a kind without a class here: its JSON document and its CSV tables."""

    document: dict[str, Any]
    csv_tables: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.document)

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """The JSON document's record lists, then the CSV tables beside it that they lack (the
        main CSV, ``NAME.csv``, repeats the first record list when there is one)."""
        found = {k: v for k, v in Result.tables(self).items() if k != "summary"}
        for name, rows in self.csv_tables.items():
            if not (name == "main" and found):
                found.setdefault(name, rows)
        summary = Result.tables(self).get("summary")
        return found | ({"summary": summary} if summary else {})


_TABLE_ONLY = {"notes", "provenance", "run"}


def _restore(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with the non-finite values named in its notes put back."""
    doc = json.loads(json.dumps(doc))
    for note in doc.get("notes") or []:
        if not isinstance(note, dict):  # the result's own notes
            continue
        value = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}.get(note.get("value"))
        key = note.get("key")
        if value is None or not key:
            continue
        tokens = [t for part in key.split(".") for t in _split_index(part)]
        target = doc
        try:
            for t in tokens[:-1]:
                target = target[t]
            target[tokens[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    return doc


def _split_index(part: str) -> list[Any]:
    head, *rest = part.split("[")
    return ([head] if head else []) + [int(r.rstrip("]")) for r in rest]


def _read_csv(path: Path) -> list[dict[str, Any]]:
    def num(s: str) -> Any:
        if s == "":
            return None
        for kind in (int, float):
            try:
                return kind(s)
            except ValueError:
                pass
        return {"True": True, "False": False}.get(s, s)

    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: num(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, ValueError, csv.Error) as e:
        raise RepdispError(f"{path}: not a readable CSV table ({e})") from None


def load_result(path: str | Path) -> Any:
    """Read a result file (``NAME.json`` written by any command, or ``NAME.csv``) back into its
    result type; kinds without a class (or older files) become a ``GenericResult``. The
    ``provenance``, ``notes`` and ``run`` blocks are kept on ``.provenance`` and ``.file_info``.

    Examples
    --------
    >>> import tempfile
    >>> import repdisp
    >>> from repdisp.io.results import GenericResult
    >>> folder = tempfile.mkdtemp()
    >>> path = repdisp.write_result(folder, "demo", GenericResult({"rows": [{"x": 1.0}]}))[0]
    >>> r = repdisp.load_result(path)
    >>> r.to_frame("rows")["x"].tolist(), "python" in r.provenance
    ([1.0], True)
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.glob("*.json") if p.name != "manifest.json")
        if len(found) != 1:
            raise RepdispError(f"{path}: give one result file (found {len(found)} JSON files)")
        path = found[0]
    if not path.is_file():
        raise RepdispError(f"{path}: no such result file")
    if path.suffix == ".csv":
        return GenericResult({"kind": None}, {"main": _read_csv(path)})
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return GenericResult({"kind": "segments", "n_rows": len(rows)}, {"segments": rows})
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RepdispError(f"{path}: not a JSON result ({e})") from None
    stem = path.with_suffix("")
    csvs = {}
    for p in sorted(path.parent.glob(f"{stem.name}*.csv")):
        tname = p.stem[len(stem.name) :].lstrip("_") or "main"
        if p.stem == stem.name or p.stem.startswith(stem.name + "_"):
            csvs[tname] = _read_csv(p)
    if not isinstance(doc, dict):
        return GenericResult({"value": doc}, csvs)
    doc = _restore(doc)
    cls = _result_class(doc.get("kind"), doc.get("type"))
    if cls is GenericResult:
        cls = None
    body = {k: v for k, v in doc.items() if k not in _TABLE_ONLY | {"kind", "type", "schema"}}
    result = None
    if cls is not None:
        run = doc.get("run") or {}  # timings go back into their fields
        for k in getattr(cls, "run_keys", ()):
            if k in run:
                _put_path(body, k, run[k])
        if dataclasses.is_dataclass(cls) and "notes" in {f.name for f in dataclasses.fields(cls)}:
            body["notes"] = [n for n in doc.get("notes") or [] if not isinstance(n, dict)]
        try:
            result = cls.from_dict(body)
        except (TypeError, ValueError, KeyError) as e:
            raise RepdispError(f"{path}: not a valid {doc.get('kind')} result ({e})") from None
    if result is None:
        result = GenericResult(body, csvs)
    result.provenance.update(doc.get("provenance") or {})
    object.__setattr__(
        result, "file_info", {k: doc.get(k) for k in ("kind", "notes", "run")} | {"path": str(path)}
    )
    return result


def _result_class(kind: str | None, typename: str | None) -> type | None:
    if kind and kind in _REGISTRY:
        return _REGISTRY[kind]
    if typename and typename.startswith("repdisp."):
        module, _, qual = typename.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), qual, None)
        except ImportError:
            return None
        return cls if isinstance(cls, type) and issubclass(cls, Result) else None
    return None
