"""GGUF files: the magic check and the tensor table, read from the header alone.

A GGUF file starts with ``b"GGUF"``, a version (uint32, 2 or 3), the tensor count and the
metadata count (uint64 each), then the metadata key/value pairs and the tensor table (name, dims,
quantisation type, offset). The tensor data start at the next multiple of ``general.alignment``
(32 by default) after the table; a tensor's offset is relative to that start.

``gguf.GGUFReader`` would also materialise every metadata value, including the tokenizer's
vocabulary (seconds to minutes for large vocabularies); ``tensor_infos`` skips over the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RepdispError

MAGIC = b"GGUF"


def check_magic(path: str | Path) -> None:
    """Raise ``RepdispError`` unless ``path`` starts with the GGUF magic bytes."""
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise RepdispError(f"{path} is not a GGUF file (bad magic bytes)")


@dataclass
class GGUFTensor:
    shape: tuple[int, int]  # (rows, cols) in numpy order
    qtype: Any  # gguf.GGMLQuantizationType
    offset: int  # absolute byte offset of the data in the file
    row_bytes: int


_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def tensor_infos(path: Path) -> dict[str, GGUFTensor]:
    """Where each 2-D tensor's data lies in a GGUF file, from its header alone.

    ``gguf.GGUFReader`` builds numpy views of every metadata value, including the tokenizer's
    vocabulary (seconds to minutes for large vocabularies); here the metadata is skipped over
    and only the tensor table is read. The row layout follows ``gguf.GGML_QUANT_SIZES``."""
    import mmap
    import struct

    import gguf

    check_magic(path)
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version < 2:
            raise RepdispError(f"{path}: GGUF version {version} is not supported")
        pos, alignment = 24, 32

        def string(pos: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<Q", buf, pos)
            return bytes(buf[pos + 8 : pos + 8 + n]).decode("utf-8", "replace"), pos + 8 + n

        def skip(vtype: int, pos: int) -> int:
            if vtype == 8:  # string
                return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
            if vtype == 9:  # array: item type, count, items
                itype, count = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                if itype in _SIZES:
                    return pos + count * _SIZES[itype]
                for _ in range(count):
                    pos = skip(itype, pos)
                return pos
            return pos + _SIZES[vtype]

        for _ in range(n_kv):
            key, pos = string(pos)
            (vtype,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            if key == "general.alignment":
                (alignment,) = struct.unpack_from("<I", buf, pos)
            pos = skip(vtype, pos)
        raw = {}
        for _ in range(n_tensors):
            name, pos = string(pos)
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            qtype, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            raw[name] = (dims, qtype, offset)
    except (struct.error, KeyError) as e:
        raise RepdispError(f"{path}: malformed GGUF header ({e})") from None
    finally:
        buf.close()
    start = pos + (-pos) % alignment
    out = {}
    for name, (dims, qtype, offset) in raw.items():
        if len(dims) != 2:
            continue
        qt = gguf.GGMLQuantizationType(qtype)
        block, size = gguf.GGML_QUANT_SIZES[qt]
        out[name] = GGUFTensor(
            (int(dims[1]), int(dims[0])), qt, start + offset, dims[0] // block * size
        )
    return out
