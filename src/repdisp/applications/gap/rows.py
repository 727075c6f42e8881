"""Lazy reader of output-embedding rows: only the rows of the tokens used are read.

safetensors  ``safe_open`` memory-maps the file; ``get_slice`` reads single rows
URL          any fsspec URL (``hf://``, ``s3://``, ``https://``, ``file://``) of a safetensors
             file or folder: the header and the needed rows' byte ranges only (``remote``)
hub id       ``org/name`` that is no local path: its snapshot in the local hub cache when it
             holds the safetensors there (nothing is downloaded), else ``hf://org/name``
             (the header, the rows' byte ranges and ``tokenizer.json``: no weights download)
GGUF         the header's tensor table (``core.gguf``) locates ``output.weight`` (or
             ``token_embd.weight``); the needed rows are read through a memory map and
             dequantised with ``gguf.quants.dequantize``
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import RepdispError
from ...core.gguf import tensor_infos
from ...core.hub import is_hub_id, offline
from ...core.models import BUNDLED, file_fingerprint, prepare
from .remote import RemoteSafetensors, is_url

_HEAD_KEYS = ("lm_head.weight", "embed_out.weight", "output.weight")
_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")


def hub_source(repo: str) -> str:
    """Where the rows of hub model ``repo`` are read from: its cached snapshot folder when that
    holds ``*.safetensors`` (local files only), else ``hf://repo`` (byte ranges)."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                repo,
                allow_patterns=["*.safetensors", "*.safetensors.index.json", "tokenizer.json"],
                local_files_only=True,
            )
        )
        if any(folder.glob("*.safetensors")):
            return str(folder)
    except Exception:  # not cached (huggingface_hub raises its own types)
        pass
    if offline():
        raise RepdispError(f"{repo}: not in the local hub cache and the hub is off (HF_HUB_OFFLINE)")
    return f"hf://{repo}"


class EmbeddingRows:
    """Lazy reader of the output-embedding rows of one checkpoint (safetensors or GGUF)."""

    def __init__(self, spec: str):
        self.spec = spec
        self._remote: RemoteSafetensors | None = None
        if spec not in BUNDLED and not Path(spec).expanduser().exists() and is_hub_id(spec):
            spec = hub_source(spec)
        if is_url(spec):
            self._remote = r = RemoteSafetensors(spec, _HEAD_KEYS, _EMBED_SUFFIXES)
            self.tensor, self.tied, self.kind, self.path = r.tensor, r.tied, "safetensors", None
            self._tokenizer_json: str | None = None
            return
        path = Path(spec).expanduser()
        if spec in BUNDLED:
            path = prepare(spec)  # the converted safetensors folder (made once)
        if path.is_file() and path.suffix == ".gguf":
            self._open_gguf(path)
        elif path.is_dir():
            self._open_safetensors(path)
        else:
            raise RepdispError(
                f"{spec!r}: not a bundled name ({', '.join(BUNDLED)}), a model folder with "
                "*.safetensors, or a .gguf file"
            )
        self.path = path

    def _open_safetensors(self, folder: Path) -> None:
        from safetensors import safe_open

        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise RepdispError(f"{folder} has no *.safetensors file")
        found: dict[str, Path] = {}
        for f in files:
            with safe_open(f, framework="pt") as h:
                for k in h.keys():
                    if k in _HEAD_KEYS or k.endswith(_EMBED_SUFFIXES):
                        found[k] = f
        head = next((k for k in _HEAD_KEYS if k in found), None)
        emb = next((k for k in sorted(found) if k.endswith(_EMBED_SUFFIXES)), None)
        self.tensor = head or emb
        if self.tensor is None:
            raise RepdispError(f"{folder}: no lm_head.weight nor input embedding tensor found")
        self.tied = head is None
        self._file = found[self.tensor]
        self.kind = "safetensors"

    def _open_gguf(self, path: Path) -> None:
        infos = tensor_infos(path)
        self.tensor = "output.weight" if "output.weight" in infos else "token_embd.weight"
        if self.tensor not in infos:
            raise RepdispError(f"{path}: no output.weight nor token_embd.weight tensor")
        self.tied = self.tensor == "token_embd.weight"
        self._gguf = infos[self.tensor]
        self.kind = "gguf"

    def tokenizer_key(self) -> str:
        """Identifies the tokenizer: checkpoints with equal keys share one tokenizer load and
        the cached token sets. The sha256 of ``tokenizer.json``, else the file's fingerprint."""
        if self._remote is not None:
            return hashlib.sha256(self._remote_tokenizer().encode()).hexdigest()
        tj = self.path / "tokenizer.json" if self.kind == "safetensors" else None
        if tj is not None and tj.exists():
            return hashlib.sha256(tj.read_bytes()).hexdigest()
        return file_fingerprint(self.path) if self.kind == "gguf" else str(self.path.resolve())

    def tokenizer(self) -> Any:
        """The checkpoint's own tokenizer: ``tokenizer.json`` through the ``tokenizers`` library
        (fastest), else transformers (from the folder, or from the GGUF metadata)."""
        from transformers import AutoTokenizer

        try:
            if self._remote is not None:
                from tokenizers import Tokenizer

                return Tokenizer.from_str(self._remote_tokenizer())
            if self.kind == "safetensors" and (self.path / "tokenizer.json").exists():
                from tokenizers import Tokenizer

                return Tokenizer.from_file(str(self.path / "tokenizer.json"))
            if self.kind == "gguf":
                return AutoTokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name)
            return AutoTokenizer.from_pretrained(self.path)
        except Exception as e:  # tokenizers raises its own types
            raise RepdispError(f"cannot load the tokenizer of {self.spec}: {e}") from None

    def _remote_tokenizer(self) -> str:
        if self._tokenizer_json is None:
            self._tokenizer_json = self._remote.tokenizer_json()
        return self._tokenizer_json

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """float64 rows ``ids`` of the matrix; nothing else is read or dequantised."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._remote is not None:
            return self._remote.rows(ids)
        if self.kind == "gguf":
            from gguf.quants import dequantize

            info = self._gguf
            if ids.max() >= info.shape[0]:
                raise RepdispError(f"token id {ids.max()} outside the {info.shape[0]}-row matrix")
            data = np.memmap(self.path, np.uint8, "r", info.offset, (info.shape[0], info.row_bytes))
            return dequantize(np.asarray(data[ids]), info.qtype).astype(np.float64)
        from safetensors import safe_open

        with safe_open(self._file, framework="pt") as h:
            sl = h.get_slice(self.tensor)
            n = sl.get_shape()[0]
            if ids.max() >= n:
                raise RepdispError(f"token id {ids.max()} outside the {n}-row matrix")
            return np.stack([sl[i : i + 1].double().numpy()[0] for i in ids])


def _matrix_shape(src: EmbeddingRows) -> tuple[int, int]:
    if src._remote is not None:
        return src._remote.shape
    if src.kind == "gguf":
        return src._gguf.shape
    from safetensors import safe_open

    with safe_open(src._file, framework="pt") as h:
        return tuple(h.get_slice(src.tensor).get_shape())
