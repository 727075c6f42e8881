"""The one writer of result files: ``write_result(folder, name, result)``.

Contract: ``write_result`` writes, atomically, into ``folder``

    NAME.json               kind, type, schema, the result's fields (``to_dict()``), ``notes``,
                            ``provenance`` (``io.provenance.provenance``) and ``run``
    NAME.csv                the first of ``tables()``; NAME_<table>.csv the others (non-empty ones)
    NAME.png                ``figure()``, when the result has one
    NAME_segments.parquet   the per-segment rows (``Result.segments()``), when the result has them

and returns their paths in that order. Commands call it and nothing else, so the files of
``repdisp.write_result(folder, name, r)`` are those of the command that made ``r``.

The JSON is strict: a non-finite float becomes ``null`` and a ``notes`` entry names its key, its
value and why (``Result.explain_nonfinite``). Everything that differs between two identical runs
(wall time: the result's ``run_keys``, date, host) lives in ``run``, so two identical runs give
files equal byte for byte once ``run`` is removed. Every Parquet table carries, in its schema
metadata under ``repdisp``, the JSON ``{"kind", "type", "schema", "result", "provenance"}``: the
same provenance block as ``NAME.json``, and that file's name.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError
from .figures import save_figure
from .files import _atomic_bytes, _dumps, parquet_bytes, strict_json, write_csv
from .protocol import Result, _plain
from .provenance import provenance

SCHEMA = 1
PARQUET_KEY = "repdisp"  # the schema metadata key of every Parquet table written here
_MISSING = object()


def _pop_path(d: dict[str, Any], key: str) -> Any:
    """Remove ``a.b.c`` from nested dicts and return it (``_MISSING`` when absent)."""
    *parents, last = key.split(".")
    for part in parents:
        d = d.get(part) if isinstance(d, dict) else None
    return d.pop(last) if isinstance(d, dict) and last in d else _MISSING


def _identity(result: Any) -> tuple[str | None, str | None]:
    if isinstance(result, Result):
        return result.kind, f"{type(result).__module__}.{type(result).__qualname__}"
    return None, None


def result_document(
    result: Any,
    *,
    command: list[str] | None = None,
    run: dict[str, Any] | None = None,
    prov: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document of ``result``: its fields, ``notes``, ``provenance``, ``run``
    (``prov``: a provenance block already made for it, else ``provenance(result, command)``)."""
    kind, typename = _identity(result)
    if isinstance(result, Result):
        body = result.to_dict()
        run_keys = result.run_keys
        explain = result.explain_nonfinite
    else:
        body = _plain(result)
        run_keys, explain = ("seconds",), None
    if not isinstance(body, dict):
        body = {"value": body}
    timing = {k: v for k in run_keys if (v := _pop_path(body, k)) is not _MISSING}
    doc: dict[str, Any] = {"kind": kind, "type": typename, "schema": SCHEMA}
    doc |= body
    doc, notes = strict_json(doc, explain)
    # a result with notes of its own (strings) keeps them first; the writer's notes are dicts
    doc["notes"] = list(doc.get("notes") or []) + notes
    doc["provenance"], _ = strict_json(prov if prov is not None else provenance(result, command))
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
    segments: bool = True,
    command: list[str] | None = None,
    run: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> list[Path]:
    """Write ``result`` into ``out_dir``: ``NAME.json`` (fields, notes, provenance, run),
    ``NAME.csv`` and ``NAME_<table>.csv`` from ``tables()`` (or the given dict), ``NAME.png``
    from ``figure()`` (or the given figure) and ``NAME_segments.parquet`` from ``segments()``
    (``segments=False``: not). Returns the paths written, the JSON first.

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
    prov = provenance(result, command)
    doc = result_document(result, command=command, run=run, prov=prov)
    paths = [_atomic_bytes(path, _dumps(doc))]
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
    # through Result itself: a subclass field named ``segments`` cannot hide the method
    rows = Result.segments(result) if segments and isinstance(result, Result) else None
    if rows:
        paths.append(_write_parquet(out, name, rows, result, doc["provenance"]))
    return paths


def _write_parquet(
    out: Path, name: str, rows: list[dict[str, Any]], result: Any, prov: dict[str, Any]
) -> Path:
    kind, typename = _identity(result)
    meta = {"kind": kind, "type": typename, "schema": SCHEMA, "result": f"{name}.json"}
    meta["provenance"] = prov
    text = json.dumps(meta, indent=None, allow_nan=False, ensure_ascii=False)
    data = parquet_bytes(rows, {PARQUET_KEY: text})
    return _atomic_bytes(out / f"{name}_segments.parquet", data)


def write_segments(
    out_dir: str | Path,
    name: str,
    rows: list[dict[str, Any]],
    *,
    result: Any = None,
    command: list[str] | None = None,
) -> Path:
    """Per-segment rows as ``NAME_segments.parquet`` (one column per key), atomically, with the
    provenance of ``result`` (or of this process alone) in the schema metadata. ``write_result``
    already writes this file for a result that has per-segment rows."""
    prov, _ = strict_json(provenance(result, command))
    return _write_parquet(Path(out_dir), name, rows, result, prov)
