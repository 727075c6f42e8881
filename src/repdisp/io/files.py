"""The bytes of result files: strict JSON, CSV tables and Parquet tables, each written atomically.

Contract:

- ``strict_json(obj)`` is a plain copy of ``obj`` (``protocol.plain``) in which every non-finite
  float is ``None``; it also returns one note ``{"key", "value", "why"}`` per value replaced, the
  key a path such as ``rows[1].x``. ``write_json`` writes it indented, UTF-8, with a final newline.
- ``write_csv(path, rows)`` writes flat dicts with the union of their keys as the header, in first
  appearance order; ``read_csv`` reads such a file back (``""`` -> None, ints, floats, booleans).
- ``parquet_bytes(rows, metadata)`` is one Parquet table, one column per key (union, in first
  appearance order), with ``metadata`` (str -> str) in its schema; ``read_parquet`` returns the
  rows and that metadata.
- Every writer goes through ``_atomic_bytes`` (``core.shards.atomic_write``): a reader sees the old
  file or the new one, never a part. Identical input gives identical bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError
from ..core.shards import atomic_write
from .protocol import _plain


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


def _keys(rows: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for k in row:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    return keys


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=_keys(rows), lineterminator="\n")
    w.writeheader()
    w.writerows(_plain(rows))
    return buf.getvalue().encode()


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write a list of flat dicts as CSV with the union of their keys as header, atomically."""
    return _atomic_bytes(Path(path), _csv_bytes(rows))


def read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV table written by ``write_csv``: empty cells None, numbers parsed."""

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


_read_csv = read_csv


def parquet_bytes(rows: list[dict[str, Any]], metadata: dict[str, str] | None = None) -> bytes:
    """Rows as one Parquet table (one column per key, missing cells null), ``metadata`` in its
    schema (``pyarrow`` schema metadata, str -> str)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    plain = _plain(rows)
    table = pa.table({k: [r.get(k) for r in plain] for k in _keys(plain)})
    if metadata:
        table = table.replace_schema_metadata(metadata)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def read_parquet(path: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The rows of a Parquet table and its schema metadata (decoded to str)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:
        raise RepdispError(f"{path}: not a readable Parquet table ({e})") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return table.to_pylist(), meta
