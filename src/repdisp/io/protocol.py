"""The result protocol shared by every analysis, application and training run.

``Result`` is a mixin for result dataclasses::

    table()        plain text for the terminal
    tables()       {name: [row dict, ...]}: the result's tables, first one the main one
    figure()       a matplotlib ``Figure`` (``io.figures.new_figure``: no pyplot state), or None
    to_dict()      plain JSON-able values (``plain``): every field but the per-segment rows
    to_frame()     a pandas DataFrame of one of ``tables()`` (the first by default)
    headline()     the one-line answer a report opens with (what, value, CI, significant), or None
    segments()     the per-segment rows, or None; ``segments(long=True)``: one row per segment and
                   site (the ``what@site`` columns become a ``site`` column and one per ``what``)
    provenance     what the library recorded on the result (``io.provenance.record``)

Per-segment rows are a declared field, ``per_segment_rows: ... = segment_field()``: kept out of
``to_dict()`` and the JSON, written as ``NAME_segments.parquet`` by ``io.writer.write_result`` and
read back by ``io.reader.load_result``. ``build(tp, value)`` turns plain data back into the
annotated type (nested dataclasses, lists, dicts, tuples, optionals, numpy arrays); each subclass
with a ``kind`` is registered, so a file's ``kind`` names the class it is read back into
(``result_class``). ``GenericResult`` holds a file of a kind without a class.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.errors import RepdispError

SEGMENTS = "segments"  # the metadata mark of the per-segment field


def segment_field() -> Any:
    """The declaration of a result's per-segment rows (a list of flat dicts, or None): not part
    of ``to_dict()`` or the JSON; the writer puts them into ``NAME_segments.parquet``."""
    return dataclasses.field(default=None, repr=False, metadata={"repdisp": SEGMENTS})


def segments_field_name(cls: Any) -> str | None:
    """The name of the field declared with ``segment_field()`` on ``cls``, or None."""
    if not is_dataclass(cls):
        return None
    for f in dataclasses.fields(cls):
        if f.metadata.get("repdisp") == SEGMENTS:
            return f.name
    return None


def long_segments(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Wide per-segment rows (``score@final``, ``within_dispersion@0.attn``, ...) in long format:
    one row per segment and site, the segment's other columns, ``site``, then one column per
    measure (``score``, ``within_dispersion``). Sites in the order of their first column."""
    out = []
    for row in rows:
        base = {k: v for k, v in row.items() if "@" not in k}
        by_site: dict[str, dict[str, Any]] = {}
        for k, v in row.items():
            if "@" in k:
                what, site = k.split("@", 1)
                by_site.setdefault(site, {})[what] = v
        out += [base | {"site": site} | values for site, values in by_site.items()]
    return out


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
        return _plain(
            {
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.metadata.get("repdisp") != SEGMENTS
            }
        )

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

    def segments(self, long: bool = False) -> list[dict[str, Any]] | None:
        """Per-segment rows (the field declared with ``segment_field()``), or None when the
        result has none; ``long=True``: one row per segment and site (``long_segments``), e.g.
        ``pandas.DataFrame(r.segments(long=True))``."""
        name = segments_field_name(type(self))
        rows = getattr(self, name, None) if name else None
        if rows is None:
            return None
        return long_segments(rows) if long else rows

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


def result_class(kind: str | None, typename: str | None) -> type | None:
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


_result_class = result_class
