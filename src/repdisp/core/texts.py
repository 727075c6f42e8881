"""Documents of a text source, read strictly: one ``RepdispError`` line for anything malformed.

Sources: built-ins that need no download (``python-docs``: CPython's ``pydoc_data.topics``;
``python-code``: the top-level modules of the running Python's standard library), local
``.txt``/``.raw``/``.md``/``.jsonl``/``.jsonl.gz``/``.csv``/``.parquet`` files (or a folder of
them, read in name order), and ``hf:NAME[:CONFIG]`` for the ``datasets`` library (needs
internet; ``split`` and ``trust_remote_code`` are passed explicitly, default ``test`` and False).
Texts already in memory (a list, a pandas Series, a ``datasets`` column: any ordered sequence of
``str``) are taken as they are, each item checked to be a string.

Contract: a text value that is not a string, a malformed line, a truncated or corrupt file is an
error naming the file and the line or record; a UTF-8 byte-order mark is dropped and ``\\r\\n`` /
``\\r`` read as ``\\n``; blank documents are dropped and a source with no text is refused. The
last few sources read are remembered (keyed by their files' sizes and mtimes), so a pre-flight
check of the data before the model loads does not read them twice.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import sys
import sysconfig
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import RepdispError, warn
from .hub import dataset_access

BUILTIN_SOURCES = {
    "python-docs": "English prose: CPython's pydoc topics (pydoc_data.topics)",
    "python-code": "Python code: top-level modules of the standard library",
}
_TEXT_SUFFIXES = (".txt", ".raw", ".md")
DATA_SUFFIXES = (*_TEXT_SUFFIXES, ".jsonl", ".jsonl.gz", ".csv", ".parquet")


def _decode(raw: bytes, where: str, errors: str) -> str:
    """UTF-8 text without a leading byte-order mark."""
    try:
        text = raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise RepdispError(
            f"{where}: not valid UTF-8 at byte {e.start}; pass --encoding-errors replace to "
            "substitute U+FFFD for bad bytes"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _newlines(text: str) -> str:
    """``\r\n`` and lone ``\r`` as ``\n``: what Python's text mode does when it reads a file."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _builtin(name: str) -> list[str]:
    if name == "python-docs":
        from pydoc_data.topics import topics

        return [topics[k] for k in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("*.py"))]


def _kind(value: Any) -> str:
    """A JSON-ish name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean (bool)"
    if isinstance(value, (int, float)):
        return f"a number ({type(value).__name__})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _text_of(value: Any, field: str, where: str) -> str:
    """The string in ``field``; anything else (null, number, list, ...) is an error, never
    ``str(value)`` ("None", "12345") going into the segments."""
    if isinstance(value, str):
        return value
    raise RepdispError(f"{where}: field {field!r} is {_kind(value)}, not a string")


def _read_jsonl(path: Path, raw: bytes, field: str, errors: str) -> list[str]:
    texts = []
    for n, line in enumerate(_newlines(_decode(raw, str(path), errors)).split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise RepdispError(f"{path}: line {n}: invalid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise RepdispError(f"{path}: line {n}: not a JSON object (got {_kind(rec)})")
        if field not in rec:
            raise RepdispError(f"{path}: line {n} has no field {field!r} (fields: {sorted(rec)})")
        texts.append(_text_of(rec[field], field, f"{path}: line {n}"))
    return texts


def _csv_limit() -> None:
    """Let a CSV cell be as long as a document (the csv module stops at 128 KiB by default)."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # a C long is 32 bits on some platforms
            limit //= 2


def _read_csv(path: Path, field: str, errors: str) -> list[str]:
    _csv_limit()
    text = _newlines(_decode(path.read_bytes(), str(path), errors))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    texts = []
    try:
        for rec in reader:
            where = f"{path}: line {reader.line_num}"
            if field not in rec:
                raise RepdispError(f"{where} has no field {field!r} (fields: {sorted(rec)})")
            if rec[field] is None:
                raise RepdispError(
                    f"{where}: field {field!r} is missing (the row has fewer cells than the header)"
                )
            texts.append(rec[field])
    except csv.Error as e:
        raise RepdispError(f"{path}: line {reader.line_num}: invalid CSV ({e})") from None
    return texts


def _read_parquet(path: Path, field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=None)
    except (pa.ArrowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RepdispError(
            f"{path}: not a readable parquet file (truncated or corrupt?): {first}"
        ) from None
    if field not in table.column_names:
        raise RepdispError(f"{path}: no column {field!r} (columns: {table.column_names})")
    return [
        _text_of(v, field, f"{path}: record {i}")
        for i, v in enumerate(table.column(field).to_pylist(), 1)
    ]


def _read_file(path: Path, field: str, errors: str) -> list[str]:
    name = path.name.lower()
    if name.endswith(_TEXT_SUFFIXES):
        return [_newlines(_decode(path.read_bytes(), str(path), errors))]
    if name.endswith((".jsonl", ".jsonl.gz")):
        raw = path.read_bytes()
        if name.endswith(".gz"):
            try:
                raw = gzip.decompress(raw)
            except (EOFError, OSError, zlib.error) as e:
                raise RepdispError(
                    f"{path}: cannot decompress: truncated or not a gzip file ({e})"
                ) from None
        return _read_jsonl(path, raw, field, errors)
    if name.endswith(".csv"):
        return _read_csv(path, field, errors)
    if name.endswith(".parquet"):
        return _read_parquet(path, field)
    raise RepdispError(f"{path}: unsupported file type; use {', '.join(DATA_SUFFIXES)}")


DEFAULT_SPLIT = "test"  # the split of an ``hf:`` source when none is given


def _hf_dataset(spec: str, field: str, split: str, trust_remote_code: bool) -> list[str]:
    name, _, config = spec[3:].partition(":")
    if not name.strip():
        raise RepdispError(f"{spec!r}: give a dataset name, hf:NAME[:CONFIG]")
    try:
        import datasets
    except ImportError:
        raise RepdispError(
            "hf: sources need the `datasets` package: pip install 'repdisp[datasets]'"
        ) from None
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    dataset_access(name)
    try:
        ds = datasets.load_dataset(name, config or None, split=split, **kwargs)
    except Exception as e:  # network, missing dataset/config/split, script refused: say which
        text = str(e).strip()
        first = text.splitlines()[0] if text else "no details"
        raise RepdispError(
            f"cannot load dataset {name!r} split {split!r}: {type(e).__name__}: {first}"
        ) from e
    if field not in ds.column_names:
        raise RepdispError(f"dataset {name!r} has no column {field!r} (columns: {ds.column_names})")
    return [_text_of(t, field, f"dataset {name!r}: record {i}") for i, t in enumerate(ds[field], 1)]


def _read_folder(path: Path, field: str, errors: str) -> list[str]:
    """Every data file under ``path`` in name order; files of other types are skipped with one
    warning listing them (hidden files and folders silently)."""
    files, skipped = [], []
    for p in sorted(path.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(path).parts):
            continue
        (files if p.name.lower().endswith(DATA_SUFFIXES) else skipped).append(p)
    if not files:
        only = f"only {', '.join(p.name for p in skipped[:5])}" if skipped else "empty"
        raise RepdispError(f"data folder {path} holds no {'/'.join(DATA_SUFFIXES)} files ({only})")
    if skipped:
        names = [p.relative_to(path).as_posix() for p in skipped]
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        warn(f"{path}: skipped {len(names)} file(s) of unknown type: {', '.join(names[:10])}{more}")
    return [d for p in files for d in _read_file(p, field, errors)]


_MEMO: dict[tuple, list[str]] = {}  # the last few sources read, so a pre-flight check is free
_MEMO_SIZE = 4


def _signature(source: str) -> tuple:
    """What identifies the content of a local source without reading it: sizes and mtimes."""
    path = Path(source).expanduser()
    try:
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        stats = [(f, f.stat()) for f in files]
        return tuple((str(f), st.st_size, st.st_mtime_ns) for f, st in stats)
    except OSError:
        return ()


def is_source(data: Any) -> bool:
    """Whether ``data`` names a source (a string or a path) rather than holding texts."""
    return isinstance(data, (str, os.PathLike))


def data_name(data: Any) -> str:
    """How results and messages name ``data``: the source itself, or ``N texts in memory``."""
    if is_source(data):
        return os.fspath(data)
    n = len(data) if hasattr(data, "__len__") else "?"
    return f"{n} texts in memory"


def texts_in_memory(data: Any) -> list[str]:
    """The non-blank strings of an in-memory sequence - a list or tuple, a pandas Series, a
    ``datasets`` column, a numpy array of str, anything ordered with ``len`` whose items are
    ``str`` - in order. Any other value, or an item that is not a string, is one error line."""
    ordered = hasattr(data, "__len__") and hasattr(data, "__iter__")
    if not ordered or isinstance(data, (bytes, bytearray, dict, set, frozenset)):
        raise RepdispError(
            "data: expected a source (a file, a folder, a built-in or hf:NAME) or a sequence of "
            f"strings (list, pandas Series, datasets column), got {type(data).__name__}"
        )
    docs = []
    for i, value in enumerate(data):
        if not isinstance(value, str):
            raise RepdispError(f"data[{i}] is {_kind(value)}, not a string")
        docs.append(value)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise RepdispError(f"data ({len(data)} texts in memory) holds no text")
    return docs


def load_texts(
    source: str | Sequence[str],
    text_field: str = "text",
    split: str | None = None,
    encoding_errors: str = "strict",
    trust_remote_code: bool = False,
) -> list[str]:
    """Documents of a source (built-in name, file, folder of files, or ``hf:NAME[:CONFIG]``).

    Strict: a text value that is not a string, a malformed line, a truncated or corrupt file is
    a one-line ``RepdispError`` naming the file and the line or record. A UTF-8 byte-order mark
    is dropped and ``\\r\\n`` / ``\\r`` line ends read as ``\\n`` in text, jsonl and csv files.
    ``split`` and ``trust_remote_code`` apply to ``hf:`` sources.
    The last few sources read are remembered (keyed by their files' sizes and mtimes), so the
    CLI's check of the data before the model loads does not read them twice.

    Parameters
    ----------
    source : str, path, or sequence of str
        A built-in name (``python-docs``, ...), a .txt/.jsonl/.csv(.gz) file, a folder of them,
        ``hf:NAME[:CONFIG]`` (needs the ``datasets`` package), or texts in memory (a list, a
        pandas Series, a datasets column: ``texts_in_memory``).
    text_field : str
        Field holding the text in jsonl/csv records and datasets.
    split : str, optional
        Dataset split for ``hf:`` sources (``--split``; default ``test``).
    encoding_errors : str
        How undecodable bytes are treated (``strict`` refuses them).
    trust_remote_code : bool, optional
        Let an ``hf:`` dataset run its loading script.

    Returns
    -------
    list of str
        The non-blank documents, in order.

    Examples
    --------
    >>> from repdisp import load_texts
    >>> docs = load_texts("python-docs")
    >>> len(docs) > 10 and all(d.strip() for d in docs)
    True
    """
    if not is_source(source):
        return texts_in_memory(source)
    source = os.fspath(source)
    split = split or DEFAULT_SPLIT
    trust = bool(trust_remote_code)
    key = (source, text_field, split, encoding_errors, trust, _signature(source))
    if key not in _MEMO:
        docs = _load_texts(source, text_field, split, encoding_errors, trust)
        while len(_MEMO) >= _MEMO_SIZE:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = docs
    return list(_MEMO[key])


def _load_texts(
    source: str, text_field: str, split: str, encoding_errors: str, trust_remote_code: bool
) -> list[str]:
    """``load_texts`` without the memo."""
    if not source.strip():
        raise RepdispError(
            "--data is empty: give a file, a folder, a built-in "
            f"({', '.join(BUILTIN_SOURCES)}) or hf:NAME"
        )
    if source in BUILTIN_SOURCES:
        docs = _builtin(source)
    elif source.startswith("hf:"):
        docs = _hf_dataset(source, text_field, split, trust_remote_code)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            docs = _read_folder(path, text_field, encoding_errors)
        elif path.is_file():
            docs = _read_file(path, text_field, encoding_errors)
        else:
            raise RepdispError(
                f"data {source!r} not found: not a file, a folder, a built-in "
                f"({', '.join(BUILTIN_SOURCES)}) or hf:NAME"
            )
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise RepdispError(f"data {source!r} holds no text")
    return docs
