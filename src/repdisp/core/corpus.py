"""Text sources into fixed-length token segments, sampled reproducibly.

Sources: built-ins that need no download (``python-docs``: CPython's ``pydoc_data.topics``;
``python-code``: the top-level modules of the running Python's standard library), local
``.txt``/``.raw``/``.jsonl``/``.jsonl.gz``/``.csv``/``.parquet`` files (or a folder of them), and
``hf:NAME[:CONFIG]`` for the ``datasets`` library (needs internet).

Segmenting: every document is tokenised without special tokens; documents are joined into one
stream with the tokenizer's EOS token between them (as in pre-training) and the stream is cut
into non-overlapping windows of ``seq_len`` tokens. When the tokenizer adds a BOS token by
default (Gemma, Llama-2/3), it is prepended to every segment, so the model sees the input it was
trained on; perplexity is then over all ``seq_len`` tokens, and the BOS position is never pooled.
Without a BOS the first segment token is only context (perplexity covers ``seq_len - 1`` tokens).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RepdispError

BUILTIN_SOURCES = {
    "python-docs": "English prose: CPython's pydoc topics (pydoc_data.topics)",
    "python-code": "Python code: top-level modules of the standard library",
}
_TEXT_SUFFIXES = (".txt", ".raw", ".md")


def _decode(raw: bytes, where: str, errors: str) -> str:
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise RepdispError(
            f"{where}: not valid UTF-8 at byte {e.start}; pass --encoding-errors replace to "
            "substitute U+FFFD for bad bytes"
        ) from None


def _builtin(name: str) -> list[str]:
    if name == "python-docs":
        from pydoc_data.topics import topics

        return [topics[k] for k in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("*.py"))]


def _records_field(records: Any, field: str, where: str) -> list[str]:
    texts = []
    for i, rec in enumerate(records, 1):
        if field not in rec:
            raise RepdispError(
                f"{where}: record {i} has no field {field!r} (fields: {sorted(rec)})"
            )
        texts.append(str(rec[field]))
    return texts


def _read_file(path: Path, field: str, errors: str) -> list[str]:
    name = path.name.lower()
    if name.endswith(_TEXT_SUFFIXES):
        return [_decode(path.read_bytes(), str(path), errors)]
    if name.endswith((".jsonl", ".jsonl.gz")):
        raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
        lines = _decode(raw, str(path), errors).splitlines()
        try:
            records = [json.loads(line) for line in lines if line.strip()]
        except json.JSONDecodeError as e:
            raise RepdispError(f"{path}: invalid JSON line ({e.msg})") from None
        return _records_field(records, field, str(path))
    if name.endswith(".csv"):
        text = _decode(path.read_bytes(), str(path), errors)
        return _records_field(csv.DictReader(text.splitlines()), field, str(path))
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if field not in table.column_names:
            raise RepdispError(f"{path}: no column {field!r} (columns: {table.column_names})")
        return [str(t) for t in table.column(field).to_pylist()]
    raise RepdispError(f"{path}: unsupported file type; use .txt, .jsonl, .csv or .parquet")


def _hf_dataset(spec: str, field: str, split: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise RepdispError(
            "hf: sources need the `datasets` package: pip install datasets"
        ) from None
    name, _, config = spec[3:].partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:
        raise RepdispError(
            f"cannot load dataset {name!r} ({type(e).__name__}); no internet?"
        ) from e
    if field not in ds.column_names:
        raise RepdispError(f"dataset {name!r} has no column {field!r} (columns: {ds.column_names})")
    return [t for t in ds[field] if t]


def load_texts(
    source: str, text_field: str = "text", split: str = "test", encoding_errors: str = "strict"
) -> list[str]:
    """Documents of a source (built-in name, file, folder of files, or ``hf:NAME[:CONFIG]``).

    Parameters
    ----------
    source : str
        A built-in name (``python-docs``, ...), a .txt/.jsonl/.csv(.gz) file, a folder of them,
        or ``hf:NAME[:CONFIG]`` (needs the ``datasets`` package).
    text_field : str
        Field holding the text in jsonl/csv records and datasets.
    split : str
        Dataset split for ``hf:`` sources.
    encoding_errors : str
        How undecodable bytes are treated (``strict`` refuses them).

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
    if source in BUILTIN_SOURCES:
        docs = _builtin(source)
    elif source.startswith("hf:"):
        docs = _hf_dataset(source, text_field, split)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            docs = [d for p in files for d in _read_file(p, text_field, encoding_errors)]
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


def bos_id(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer adds one by default (seen by encoding a probe), else None.

    Behaviour, not the ``add_bos_token`` flag, decides: converted GGUF tokenizers report the flag
    wrongly but still add the token."""
    bos = tokenizer.bos_token_id
    return bos if bos is not None and tokenizer("a").input_ids[:1] == [bos] else None


def prepend_bos(windows: np.ndarray, bos: int | None) -> np.ndarray:
    """Token windows (n, L) as int64 with ``bos`` in front of each (n, L + 1); unchanged when
    ``bos`` is None. Every window fed to a model gets its BOS here."""
    ids = np.asarray(windows, dtype=np.int64)
    if bos is None:
        return ids
    return np.concatenate([np.full((len(ids), 1), bos, dtype=np.int64), ids], axis=1)


def token_stream(tokenizer: Any, docs: list[str]) -> np.ndarray:
    """All documents tokenised without special tokens, joined by EOS, as one int64 array."""
    ids = tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]
    eos = tokenizer.eos_token_id
    parts: list[np.ndarray] = []
    for doc in ids:
        if parts and eos is not None:
            parts.append(np.array([eos], dtype=np.int64))
        parts.append(np.asarray(doc, dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass
class Segments:
    """Sampled token segments (N, seq_len [+1 with BOS]) and where they came from.

    Attributes
    ----------
    ids : ndarray of shape (N, L), int64
        Token ids fed to the model, BOS first when ``has_bos``.
    index : ndarray of shape (N,)
        Window index (or start) of each segment in the source's token stream.
    has_bos : bool
    source : str

    Examples
    --------
    >>> import numpy as np
    >>> from repdisp import Segments
    >>> segs = Segments(np.arange(12).reshape(3, 4), np.arange(3), False, "toy")
    >>> len(segs), len(segs.fingerprint)
    (3, 16)
    """

    ids: np.ndarray
    index: np.ndarray  # window index of each segment in the source stream
    has_bos: bool
    source: str

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fingerprint(self) -> str:
        """Hash of the exact token ids: identifies data, tokenizer, seq_len, sampling and BOS."""
        return hashlib.sha256(np.ascontiguousarray(self.ids).tobytes()).hexdigest()[:16]


def make_segments(
    tokenizer: Any,
    source: str,
    n_segments: int | None,
    seq_len: int,
    seed: int = 0,
    docs: list[str] | None = None,
    max_len: int | None = None,
    **load_kwargs: Any,
) -> Segments:
    """Sample ``n_segments`` windows of ``seq_len`` tokens (all of them when None), seeded.

    The documents are tokenised without special tokens and joined by EOS; the stream is cut
    into non-overlapping windows, ``n_segments`` of which are drawn without replacement
    (``seed``); BOS is prepended when the tokenizer adds one by default.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    source : str
        Data source (see ``load_texts``); read unless ``docs`` is given.
    n_segments : int or None
    seq_len : int
    seed : int
    docs : list of str, optional
    max_len : int, optional
        The model's context length; longer segments are refused.

    Returns
    -------
    Segments

    Examples
    --------
    >>> from repdisp import load_model, make_segments
    >>> lm = load_model("smollm2-135m")  # doctest: +SKIP
    >>> segs = make_segments(lm.tokenizer, "python-docs", 8, 32, max_len=lm.max_len)  # doctest: +SKIP
    >>> segs.ids.shape  # doctest: +SKIP
    (8, 32)
    """
    if seq_len < 2:
        raise RepdispError(f"--seq-len must be at least 2 tokens, got {seq_len}")
    if max_len is not None and seq_len + 1 > max_len:
        raise RepdispError(f"--seq-len {seq_len} exceeds the model's context of {max_len} tokens")
    if n_segments is not None and n_segments < 2:
        raise RepdispError(f"--segments must be at least 2 to measure dispersion, got {n_segments}")
    stream = token_stream(
        tokenizer, docs if docs is not None else load_texts(source, **load_kwargs)
    )
    n_windows = len(stream) // seq_len
    if n_windows == 0:
        raise RepdispError(
            f"data {source!r} has {len(stream)} tokens, fewer than one segment of {seq_len}"
        )
    if n_segments is not None and n_segments > n_windows:
        raise RepdispError(
            f"data {source!r} has only {n_windows} segments of {seq_len} tokens; ask for at most "
            f"--segments {n_windows} or a shorter --seq-len"
        )
    windows = stream[: n_windows * seq_len].reshape(n_windows, seq_len)
    index = np.arange(n_windows)
    if n_segments is not None:
        index = np.sort(np.random.default_rng(seed).choice(n_windows, n_segments, replace=False))
    bos = bos_id(tokenizer)
    return Segments(prepend_bos(windows[index], bos), index, bos is not None, source)
