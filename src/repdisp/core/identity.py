"""Content hashes that identify a model in cache keys: never its path, always its bytes.

``file_hashes``: the full sha256 of each file, streamed in 8 MiB chunks and remembered in
``$REPDISP_HOME/file-hashes.json`` under (absolute path, device, inode, size, mtime_ns,
ctime_ns); any change to a file changes one of these (ctime cannot be set back by a user, so even
an in-place edit that restores the mtime is seen) and the file is hashed again. A file written
to while it is read is not remembered. ``folder_identity``: sha256 over the (name, hash) list of
a folder's weight files and of every config, tokenizer and code file (``_SIDE_FILE_PATTERNS``),
20 hex digits; ``file_fingerprint``: one file's hash, 16 hex digits. A read-only cache only
costs hashing again next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .home import cache_root

_HASH_MEMO = "file-hashes.json"
_HASH_CHUNK = 8 << 20
# Files of a model folder besides its weights that change what it computes or how text is
# tokenised: every *.json (config, generation_config, tokenizer_config, special_tokens_map,
# added_tokens, the weight index), vocab/merges, sentencepiece/tiktoken models, remote code.
_SIDE_FILE_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.py", "*.jinja")


def _sha256_file(path: Path) -> str:
    """sha256 of the whole file, streamed once in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _memo_key(path: Path) -> str:
    """What must be unchanged for a remembered hash to be reused: absolute path, device, inode,
    size, mtime and ctime in ns (ctime cannot be set back by a user, so even an in-place edit
    that restores the mtime is noticed)."""
    st = path.stat()
    return (
        f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    )


def _read_memo(memo_path: Path) -> dict[str, str]:
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def file_hashes(paths: list[Path]) -> dict[Path, str]:
    """Full sha256 of each file, remembered in ``$REPDISP_HOME/file-hashes.json`` by
    (absolute path, device, inode, size, mtime_ns, ctime_ns), so a rerun does not read gigabytes
    again; any change to a file changes one of these and it is hashed again."""
    memo_path = cache_root() / _HASH_MEMO
    memo = _read_memo(memo_path)
    out: dict[Path, str] = {}
    changed = False
    for p in paths:
        key = _memo_key(p)
        digest = memo.get(key)
        if not (isinstance(digest, str) and len(digest) == 64):
            digest = _sha256_file(p)
            if _memo_key(p) != key:  # written to while we read it: do not remember
                out[p] = digest
                continue
            memo[key] = digest
            changed = True
        out[p] = digest
    if changed:
        # keep the memo small: forget entries of files that are gone or were changed since
        live = {}
        for k, v in memo.items():
            try:
                if _memo_key(Path(k.split("|", 1)[0])) == k:
                    live[k] = v
            except OSError:
                pass
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=memo_path.parent, prefix=".file-hashes-")
            with os.fdopen(fd, "w") as f:
                json.dump(live, f, indent=0, sort_keys=True)
            os.replace(tmp, memo_path)
        except OSError:  # a read-only cache only costs rehashing next time
            pass
    return out


def file_fingerprint(path: Path) -> str:
    """Content hash of one file (full sha256, remembered; see ``file_hashes``), 16 hex digits."""
    return file_hashes([Path(path)])[Path(path)][:16]


def folder_identity(folder: Path, weights: list[Path]) -> str:
    """Content hash of a model folder: its weight files plus every config/tokenizer/code file
    (``_SIDE_FILE_PATTERNS``), each hashed in full; any change to any of them changes it."""
    side = {p for pat in _SIDE_FILE_PATTERNS for p in folder.glob(pat) if p.is_file()}
    files = sorted(set(weights) | side)
    hashes = file_hashes(files)
    listing = [[p.name, hashes[p]] for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:20]
