"""Files that must never be half-written or silently stale.

``atomic_write`` writes through a temp file in the same folder, fsyncs and renames into place, so a
reader sees the old file or the new one, never a partial one; every cache and result file of
repdisp is written through it (``atomic_folder`` does the same for a folder). ``ShardStore`` is a folder of ``shard_XXXXX.npz`` files, each with a
``shard_XXXXX.json`` record of its sha256, cache key and row range: a shard whose record is missing,
names another key or range, or whose checksum does not match is treated as absent (recomputed).
Files and folders get the modes a plain ``open``/``mkdir`` would give (0666/0777 less the umask),
not the owner-only modes of ``tempfile``, so a shared results folder stays readable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RepdispError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def sha256_file(path: Path) -> str:
    """Streamed sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, write: Any) -> None:
    """Write through ``write(file)`` into a temp file in the same folder, then rename into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(target: Path, replace: bool = True) -> Iterator[Path]:
    """A temp folder next to ``target`` to fill; when the block ends without error it is renamed
    into place. An existing ``target`` is replaced, or kept when ``replace`` is False (another
    process finished first). The temp folder never outlives the block."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it 0700
        yield tmp
        if replace and target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if replace:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_FINISHED = [0]  # finished pieces of work (shards, checkpoints) this process wrote or found


def note_finished(n: int = 1) -> None:
    """Count ``n`` finished, kept pieces of work (a shard, a checkpoint): the CLI says "finished
    shards are kept" after an error or interrupt only when there are some."""
    _FINISHED[0] += n


def finished_count(reset: bool = False) -> int:
    """How many finished pieces this process has noted (``reset``: start counting again)."""
    n = _FINISHED[0]
    if reset:
        _FINISHED[0] = 0
    return n


_CLAIMS: list[Path] = []


def claim_folder(folder: Path) -> None:
    """Claim ``folder`` (a result folder) for this process until ``release_claims``: a lock file
    ``.NAME.repdisp-lock`` beside it, made with O_EXCL and holding the pid. Another live process
    holding it is refused with one line (two runs writing one --out at once); a lock left by a
    process that no longer runs is taken over."""
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # a file in the way: the write itself reports it, naming the path
        return
    lock = folder.parent / f".{folder.name}.repdisp-lock"
    if lock in _CLAIMS:
        return
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_UMASK)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
            except (OSError, ValueError):
                pid = 0  # being written this instant, or garbage: look again
            if pid and pid != os.getpid() and _alive(pid):
                raise RepdispError(
                    f"{folder} is being written by another repdisp run (pid {pid}); wait for "
                    "it to finish or choose another --out"
                ) from None
            if pid:  # a dead process's (or our own earlier) lock: take it over
                lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        _CLAIMS.append(lock)
        return
    raise RepdispError(f"{folder}: cannot take its lock {lock}; remove it if no run is writing")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_claims() -> None:
    """Drop every folder claimed by this process (the CLI calls this when a command ends)."""
    while _CLAIMS:
        _CLAIMS.pop().unlink(missing_ok=True)


class ShardStore:
    """A folder of ``shard_XXXXX.npz`` files, each with a ``shard_XXXXX.json`` record of its
    sha256, cache key and segment range, and a ``manifest.json`` describing the run (``meta``)."""

    def __init__(self, folder: Path, meta: dict[str, Any]):
        self.folder = folder
        self.key = meta.get("key")
        folder.mkdir(parents=True, exist_ok=True)
        self.manifest_path = folder / "manifest.json"
        text = json.dumps({"meta": meta}, indent=1).encode()
        atomic_write(self.manifest_path, lambda f: f.write(text))

    def _paths(self, i: int) -> tuple[Path, Path]:
        return self.folder / f"shard_{i:05d}.npz", self.folder / f"shard_{i:05d}.json"

    def load(self, i: int, rows: tuple[int, int] | None = None) -> dict[str, np.ndarray] | None:
        """The shard's arrays if it and its record exist and the key, the segment range ``rows``
        (when given) and the checksum all match, else None (recompute)."""
        path, record = self._paths(i)
        try:
            rec = json.loads(record.read_text())
            if not isinstance(rec, dict):  # `[]`, a number: a corrupt record
                return None
            if rec.get("key") != self.key or (rows and rec.get("rows") != list(rows)):
                return None
            if sha256_file(path) != rec.get("sha256"):
                return None
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
            note_finished()
            return arrays
        except (OSError, ValueError, EOFError):  # missing, partial, unreadable, not UTF-8
            return None

    def save(
        self, i: int, arrays: dict[str, np.ndarray], rows: tuple[int, int] | None = None
    ) -> None:
        path, record = self._paths(i)
        try:
            atomic_write(path, lambda f: np.savez(f, **arrays))
            rec = {"sha256": sha256_file(path), "key": self.key, "rows": rows and list(rows)}
            text = json.dumps(rec).encode()
            atomic_write(record, lambda f: f.write(text))
            note_finished()
        except OSError as e:  # e.g. disk full: name the shard; earlier shards stay valid
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
