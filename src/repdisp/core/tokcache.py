"""Token streams cached by content: a corpus is tokenised once per (tokenizer, source).

The key is a sha256 over the cache format version, the tokenizer's content and the documents'
content:

    tokenizer   a fast tokenizer's full serialisation (vocabulary, merges, normaliser,
                pre-tokeniser) plus its class and EOS id; a slow one's sorted vocabulary, class,
                EOS id and repr - never its path, so a copy of the same tokenizer hits the cache;
    documents   each document's UTF-8 bytes with its length, in order.

So an edited file, another tokenizer or another EOS token is a different key, never a stale hit.
Streams live as ``$REPDISP_HOME/tokens/KEY.npy`` with a ``KEY.json`` record of their sha256 and
length, both written atomically; a stream whose record is missing or whose checksum does not
match is tokenised again and rewritten. Within a process the last few streams are also kept in
memory, so the last-token mode's several context lengths tokenise once.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .home import cache_root
from .shards import atomic_write

_VERSION = 1
_MEMORY_ITEMS = 4
_memory: OrderedDict[str, np.ndarray] = OrderedDict()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of what decides a tokenizer's output (see the module docstring). Recomputed on
    every call (0.2 s for a 49k vocabulary), so a tokenizer changed in place (``add_tokens``)
    never reuses its old key."""
    h = hashlib.sha256(f"{type(tokenizer).__name__}|{tokenizer.eos_token_id}|".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        h.update(repr(tokenizer).encode())
    return h.hexdigest()[:20]


def docs_fingerprint(docs: list[str]) -> str:
    """Hash of the documents' content and boundaries."""
    h = hashlib.sha256()
    for d in docs:
        b = d.encode("utf-8", errors="surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:20]


def stream_key(tokenizer: Any, docs: list[str]) -> str:
    spec = f"{_VERSION}|{tokenizer_fingerprint(tokenizer)}|{docs_fingerprint(docs)}"
    return hashlib.sha256(spec.encode()).hexdigest()[:24]


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _load(folder: Path, key: str) -> np.ndarray | None:
    try:
        rec = json.loads((folder / f"{key}.json").read_text())
        arr = np.load(folder / f"{key}.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if arr.dtype != np.int64 or arr.ndim != 1 or len(arr) != rec.get("n"):
        return None
    return arr if _sha(arr) == rec.get("sha256") else None


def _save(folder: Path, key: str, arr: np.ndarray) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / f"{key}.npy", lambda f: np.save(f, arr, allow_pickle=False))
        text = json.dumps({"sha256": _sha(arr), "n": len(arr)}).encode()
        atomic_write(folder / f"{key}.json", lambda f: f.write(text))
    except OSError:  # a read-only or full cache only costs the next run a tokenisation
        pass


def cached_stream(
    tokenizer: Any,
    docs: list[str],
    tokenize: Callable[[Any, list[str]], np.ndarray],
    cache: bool = True,
) -> np.ndarray:
    """``tokenize(tokenizer, docs)``, read from the cache when the same tokenizer already
    tokenised the same documents. ``cache=False``: no disk reads or writes (memory only)."""
    key = stream_key(tokenizer, docs)
    if key in _memory:
        _memory.move_to_end(key)
        return _memory[key]
    folder = cache_root() / "tokens"
    arr = _load(folder, key) if cache else None
    if arr is None:
        arr = np.ascontiguousarray(tokenize(tokenizer, docs), dtype=np.int64)
        if cache:
            _save(folder, key, arr)
    arr.flags.writeable = False  # shared by every caller: segments copy out of it
    _memory[key] = arr
    while len(_memory) > _MEMORY_ITEMS:
        _memory.popitem(last=False)
    return arr


def clear_memory() -> None:
    """Forget the in-process streams (benchmarks use it to time a cold tokenisation)."""
    _memory.clear()
