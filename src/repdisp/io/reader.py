"""The one reader of result files: ``load_result(path)``, the inverse of ``io.writer.write_result``.

Contract:

- ``load_result("DIR/NAME.json")`` returns the result as its own type (the class registered for
  its ``kind``, else the one its ``type`` names), with every value written: the non-finite ones
  named in ``notes`` put back (inf, -inf, nan), the ``run_keys`` timings back in their fields,
  and, for a result with a per-segment field, the rows of ``NAME_segments.parquet`` beside it
  (so ``segments()`` works after loading). ``provenance`` holds the file's provenance block and
  ``file_info`` its kind, notes, run and path. A kind without a class, or a file from before
  ``kind``, becomes a ``GenericResult`` of the document and the CSV tables beside it.
- ``load_result("DIR")`` returns every result of the folder by name, ``{NAME: result}`` for each
  ``NAME.json`` in it (``manifest.json`` aside), sorted by name.
- ``load_result("NAME.csv")`` and ``load_result("NAME_segments.parquet")`` return a
  ``GenericResult`` of the one table (a Parquet table's provenance on ``.provenance``).
- A missing or unreadable file is a one-line ``RepdispError``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError
from .files import read_csv, read_parquet
from .protocol import GenericResult, result_class, segments_field_name
from .writer import PARQUET_KEY

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


def _put_path(d: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        d = d.get(part) if isinstance(d, dict) else None
    if isinstance(d, dict):
        d[last] = value


def parquet_provenance(meta: dict[str, str]) -> dict[str, Any]:
    """The provenance block in a Parquet table's schema metadata (``{}`` when there is none)."""
    try:
        return dict(json.loads(meta.get(PARQUET_KEY) or "{}").get("provenance") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


def load_result(path: str | Path) -> Any:
    """Read a result file (``NAME.json`` written by any command, ``NAME.csv`` or a Parquet
    table) back into its result type, or every result of a folder as ``{NAME: result}``. Kinds
    without a class (or older files) become a ``GenericResult``. The ``provenance``, ``notes`` and
    ``run`` blocks are kept on ``.provenance`` and ``.file_info``.

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
    >>> sorted(repdisp.load_result(folder))
    ['demo']
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.glob("*.json") if p.name != "manifest.json")
        if not found:
            raise RepdispError(f"{path}: no result files (NAME.json) in this folder")
        return {p.stem: _load_file(p) for p in found}
    return _load_file(path)


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise RepdispError(f"{path}: no such result file")
    if path.suffix == ".csv":
        return GenericResult({"kind": None}, {"main": read_csv(path)})
    if path.suffix == ".parquet":
        rows, meta = read_parquet(path)
        result = GenericResult({"kind": "segments", "n_rows": len(rows)}, {"segments": rows})
        result.provenance.update(parquet_provenance(meta))
        return result
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RepdispError(f"{path}: not a JSON result ({e})") from None
    stem = path.with_suffix("")
    csvs = {}
    for p in sorted(path.parent.glob(f"{stem.name}*.csv")):
        tname = p.stem[len(stem.name) :].lstrip("_") or "main"
        if p.stem == stem.name or p.stem.startswith(stem.name + "_"):
            csvs[tname] = read_csv(p)
    if not isinstance(doc, dict):
        return GenericResult({"value": doc}, csvs)
    doc = _restore(doc)
    cls = result_class(doc.get("kind"), doc.get("type"))
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
        field = segments_field_name(cls)
        parquet = path.parent / f"{stem.name}_segments.parquet"
        if field and parquet.is_file():
            object.__setattr__(result, field, read_parquet(parquet)[0])
    if result is None:
        result = GenericResult(body, csvs)
    result.provenance.update(doc.get("provenance") or {})
    object.__setattr__(
        result, "file_info", {k: doc.get(k) for k in ("kind", "notes", "run")} | {"path": str(path)}
    )
    return result
