"""Output-embedding rows of a safetensors checkpoint behind any fsspec URL, read by byte range.

``hf://org/name`` (huggingface_hub), ``s3://bucket/path`` (s3fs), ``https://host/path``,
``file:///path``, ...: a URL naming a ``.safetensors`` file, or a folder holding
``model.safetensors.index.json`` (its ``weight_map`` says which shard holds the matrix) or
``*.safetensors`` files, with ``tokenizer.json`` beside them.

A safetensors file is ``u64 little-endian n`` + ``n`` bytes of JSON header (per tensor:
``dtype``, ``shape``, ``data_offsets [begin, end)`` counted from byte ``8 + n``) + the data, row
major. So the header costs two range reads (8 bytes, then n), and row ``i`` of a (V, d) matrix of
``b``-byte elements is the range ``8 + n + begin + i·d·b`` of length ``d·b``. Only those ranges
are read (``fs.cat_ranges``, runs of consecutive ids merged into one range): bytes read from the
weights file = 8 + n + (rows needed)·d·b, whatever the file's size. With a folder and no index,
the header of each shard is read until one holds the matrix. ``tokenizer.json`` is read whole
(it is needed to map words to ids). Supported element types: F64, F32, F16, BF16.
"""

from __future__ import annotations

import json
import posixpath
import struct
from typing import Any

import numpy as np

from ...core.errors import RepdispError

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def is_url(spec: str) -> bool:
    """Whether ``spec`` is an fsspec URL (``proto://...``) rather than a local path or name."""
    head, sep, _ = spec.partition("://")
    return bool(sep) and head.replace("+", "").replace("-", "").isalnum()


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        import fsspec

        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:  # unknown protocol or its package missing
        raise RepdispError(f"{url}: cannot open this URL ({e})") from None


def read_header(fs: Any, path: str) -> tuple[int, dict[str, Any]]:
    """(data start = 8 + n, header dict) of a safetensors file: two range reads."""
    try:
        (n,) = struct.unpack("<Q", fs.cat_file(path, start=0, end=8))
        if not 2 <= n <= 100_000_000:
            raise ValueError(f"header length {n}")
        header = json.loads(fs.cat_file(path, start=8, end=8 + n))
    except (OSError, ValueError, struct.error) as e:
        raise RepdispError(f"{path}: not a readable safetensors file ({e})") from None
    return 8 + n, header


class RemoteSafetensors:
    """The output-embedding matrix of a safetensors checkpoint at an fsspec URL."""

    def __init__(self, url: str, head_keys: tuple[str, ...], embed_suffixes: tuple[str, ...]):
        self.url = url
        fs, root = _filesystem(url)
        self.fs = fs
        try:
            is_file = root.endswith(".safetensors") and fs.isfile(root)
            files = [root] if is_file else sorted(fs.glob(posixpath.join(root, "*.safetensors")))
        except OSError as e:
            raise RepdispError(f"{url}: cannot list ({e})") from None
        if not files:
            raise RepdispError(f"{url}: no .safetensors file there")
        self.folder = posixpath.dirname(root) if is_file else root
        wanted = lambda k: k in head_keys or k.endswith(embed_suffixes)  # noqa: E731
        index = posixpath.join(self.folder, "model.safetensors.index.json")
        if not is_file and fs.exists(index):
            weight_map = json.loads(fs.cat_file(index)).get("weight_map", {})
            hits = {k: posixpath.join(self.folder, f) for k, f in weight_map.items() if wanted(k)}
            heads = [hits[k] for k in head_keys if k in hits]  # the LM head wins when present
            files = heads[:1] or sorted(set(hits.values())) or files
        found: dict[str, tuple[str, int, dict[str, Any]]] = {}
        for f in files:
            start, header = read_header(fs, f)
            found |= {k: (f, start, v) for k, v in header.items() if wanted(k)}
            if any(k in head_keys for k in found):
                break  # the LM head wins over tied input embeddings: no more headers to read
        head = next((k for k in head_keys if k in found), None)
        emb = next((k for k in sorted(found) if k.endswith(embed_suffixes)), None)
        self.tensor = head or emb
        if self.tensor is None:
            raise RepdispError(f"{url}: no lm_head.weight nor input embedding tensor found")
        self.tied = head is None
        self.file, self._start, info = found[self.tensor]
        if info.get("dtype") not in _DTYPES or len(info.get("shape", ())) != 2:
            raise RepdispError(f"{url}: {self.tensor} is {info.get('dtype')} {info.get('shape')}")
        self.dtype = info["dtype"]
        self.shape = (int(info["shape"][0]), int(info["shape"][1]))
        self._begin = int(info["data_offsets"][0])
        self._row_bytes = self.shape[1] * np.dtype(_DTYPES[self.dtype]).itemsize

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """float64 rows ``ids`` (any order, repeats allowed); one range per run of ids."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.shape[0]):
            raise RepdispError(f"token id {ids.max()} outside the {self.shape[0]}-row matrix")
        uniq = np.unique(ids)
        runs = np.split(uniq, np.flatnonzero(np.diff(uniq) != 1) + 1) if uniq.size else []
        base = self._start + self._begin
        starts = [base + int(r[0]) * self._row_bytes for r in runs]
        ends = [base + (int(r[-1]) + 1) * self._row_bytes for r in runs]
        try:
            blobs = self.fs.cat_ranges([self.file] * len(runs), starts, ends)
        except OSError as e:
            raise RepdispError(f"{self.url}: reading rows failed ({e})") from None
        data = b"".join(blobs)
        if len(data) != uniq.size * self._row_bytes:
            raise RepdispError(f"{self.url}: {self.file} is shorter than its header says")
        raw = np.frombuffer(data, dtype=_DTYPES[self.dtype]).reshape(-1, self.shape[1])
        if self.dtype == "BF16":  # the high half of a float32
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        table = raw.astype(np.float64)
        return table[np.searchsorted(uniq, ids)]

    def tokenizer_json(self) -> str:
        """The text of ``tokenizer.json`` beside the weights."""
        path = posixpath.join(self.folder, "tokenizer.json")
        try:
            return self.fs.cat_file(path).decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise RepdispError(f"{self.url}: no readable tokenizer.json beside it ({e})") from None
