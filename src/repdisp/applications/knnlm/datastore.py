"""The kNN-LM datastore: keys (a site's vector at every position of a training text) and values
(the next token), filled shard by shard in one forward pass, then indexed.

Datastore folder: ``values.npy`` (int32, n) and ``keys.SITE.npy`` (float16, n × d) as memmaps,
filled shard by shard (a shard = a run of windows); ``manifest.json`` (written atomically) records
each finished shard's row checksums, so an interrupted build resumes at the first missing shard.
``index.SITE.faiss`` is an exact ``IndexFlatL2`` for small stores, IVF-PQ for large ones; its
sha256 is in the manifest too. ``Datastore.open`` checks sizes, records and the checksums of the
values (4 bytes a key) always, and the checksums of the keys and indexes with ``verify=True``;
every fault is one error line.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import RepdispError
from ...core.extract import forward_sites
from ...core.models import LoadedModel
from ...core.shards import atomic_write, note_finished
from ...core.sites import Site
from .index import _faiss, _on_gpu, build_index
from .settings import BuildReport, BuildSettings
from .windows import _batches, _window_batch, check_context, plan_windows

_VERSION = 1


def _rows_sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _site_file(site: str) -> str:
    return site.replace("/", "_")


def _npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of a ``.npy`` file, from its header alone."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"npy format version {version}")
        return tuple(shape), np.dtype(dtype), f.tell()


def shard_ranges(meta: dict[str, Any]) -> list[tuple[int, int]]:
    """Key rows [lo, hi) of each shard of a datastore, as ``build_datastore`` lays them out."""
    windows = plan_windows(int(meta["n_tokens"]), int(meta["context"]), int(meta["stride"]))
    offsets = np.cumsum([0] + [e - n for _, e, n in windows])
    w = int(meta["shard_windows"])
    return [
        (int(offsets[i]), int(offsets[min(i + w, len(windows))])) for i in range(0, len(windows), w)
    ]


_META_KEYS = {
    "identity": str, "model": str, "n_tokens": int, "context": int, "stride": int,
    "sites": list, "n_keys": int, "dim": int, "shard_windows": int,
}  # fmt: skip


@dataclass
class Datastore:
    """An opened datastore folder: memmapped keys per site, values, and the manifest.

    ``open`` checks what it opens. Always: the manifest parses and has the expected fields;
    ``values.npy`` and every ``keys.SITE.npy`` have the recorded shape, dtype and exact file
    size; every shard has its checksum record and the shards cover all key rows; every site has
    its index file; the sha256 of every shard's value rows (4 bytes a key). With ``verify=True``
    also the sha256 of every shard's key rows and of every index file (reads the whole store)."""

    folder: Path
    manifest: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, folder: str | Path, verify: bool = False) -> Datastore:
        folder = Path(folder)
        path = folder / "manifest.json"
        if not folder.is_dir():
            raise RepdispError(f"datastore {folder} not found")
        if not path.exists():
            raise RepdispError(f"{folder} is not a datastore (no manifest.json)")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RepdispError(
                f"datastore {folder}: manifest.json is corrupt ({type(e).__name__}); rebuild it "
                "with `repdisp knnlm build`"
            ) from None
        store = cls(folder, manifest)
        store._check_manifest()
        if not manifest.get("complete"):
            raise RepdispError(f"datastore {folder} is unfinished; rerun `repdisp knnlm build`")
        store._check_files()
        store.check_values()
        if verify:
            store.verify()
        return store

    def _fault(self, what: str) -> RepdispError:
        return RepdispError(
            f"datastore {self.folder}: {what}; rebuild it with `repdisp knnlm build`"
        )

    def _check_manifest(self) -> None:
        m = self.manifest
        if not isinstance(m, dict) or not isinstance(m.get("meta"), dict):
            raise self._fault("manifest.json is corrupt (no meta)")
        for key, kind in _META_KEYS.items():
            value = m["meta"].get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise self._fault(f"manifest.json is corrupt (meta.{key} = {value!r})")
        if not all(isinstance(s, str) for s in m["meta"]["sites"]) or not m["meta"]["sites"]:
            raise self._fault("manifest.json is corrupt (meta.sites)")
        for key in ("shards", "index"):
            if not isinstance(m.get(key), dict):
                raise self._fault(f"manifest.json is corrupt (no {key} record)")

    def _check_array(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
        path = self.folder / name
        if not path.is_file():
            raise self._fault(f"{name} is missing")
        try:
            got_shape, got_dtype, offset = _npy_layout(path)
        except (OSError, ValueError, SyntaxError) as e:
            raise self._fault(f"{name} is not a valid .npy file ({type(e).__name__})") from None
        if got_shape != shape or got_dtype != np.dtype(dtype):
            raise self._fault(
                f"{name} holds {got_shape} {got_dtype}, the manifest says {shape} {np.dtype(dtype)}"
            )
        size = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
        if path.stat().st_size != size:
            raise self._fault(f"{name} has {path.stat().st_size} bytes, expected {size}")

    def _check_files(self) -> None:
        meta = self.meta
        n, d = meta["n_keys"], meta["dim"]
        self._check_array("values.npy", (n,), np.int32)
        for s in self.sites:
            self._check_array(f"keys.{_site_file(s)}.npy", (n, d), np.float16)
        try:
            ranges = shard_ranges(meta)
        except RepdispError as e:
            raise self._fault(f"manifest.json is corrupt ({e})") from None
        if not ranges or ranges[-1][1] != n:
            raise self._fault(f"the shards of the manifest do not cover its {n} keys")
        for i in range(len(ranges)):
            rec = self.manifest["shards"].get(str(i))
            if not isinstance(rec, dict) or not all(
                isinstance(rec.get(k), str) for k in ("values", *self.sites)
            ):
                raise self._fault(f"shard {i} has no checksum record")
        if len(self.manifest["shards"]) != len(ranges):
            raise self._fault(
                f"the manifest records {len(self.manifest['shards'])} shards, the layout has "
                f"{len(ranges)}"
            )
        for s in self.sites:
            name = f"index.{_site_file(s)}.faiss"
            if not isinstance(self.manifest["index"].get(s), dict):
                raise self._fault(f"no index record for site {s}")
            if not (self.folder / name).is_file() or (self.folder / name).stat().st_size == 0:
                raise self._fault(f"index file {name} is missing")

    def check_values(self) -> None:
        """The sha256 of every shard's value rows (4 bytes a key: always checked at open, so a
        shuffled or overwritten ``values.npy`` never gives a quiet wrong perplexity)."""
        values = self.values()
        for i, (lo, hi) in enumerate(shard_ranges(self.meta)):
            if self.manifest["shards"][str(i)]["values"] != _rows_sha(values[lo:hi]):
                raise self._fault(f"values.npy rows {lo}-{hi} (shard {i}) fail their checksum")

    def verify(self) -> None:
        """Full check: the sha256 of every shard's key rows and of every index file (the
        values are checked at every open)."""
        keys = {s: self.keys(s) for s in self.sites}
        for i, (lo, hi) in enumerate(shard_ranges(self.meta)):
            rec = self.manifest["shards"][str(i)]
            for s in self.sites:
                if rec[s] != _rows_sha(keys[s][lo:hi]):
                    raise self._fault(
                        f"keys.{_site_file(s)}.npy rows {lo}-{hi} (shard {i}) fail their checksum"
                    )
        for s in self.sites:
            want = self.manifest["index"][s].get("sha256")
            name = f"index.{_site_file(s)}.faiss"
            if want is not None and want != _file_sha(self.folder / name):
                raise self._fault(f"{name} fails its checksum")

    @property
    def meta(self) -> dict[str, Any]:
        return self.manifest["meta"]

    @property
    def sites(self) -> list[str]:
        return list(self.meta["sites"])

    def keys(self, site: str) -> np.ndarray:
        if site not in self.sites:
            raise RepdispError(
                f"datastore {self.folder} has no keys for site {site}; has {self.sites}"
            )
        return np.load(self.folder / f"keys.{_site_file(site)}.npy", mmap_mode="r")

    def values(self) -> np.ndarray:
        return np.load(self.folder / "values.npy", mmap_mode="r")

    def index(self, site: str, nprobe: int = 32) -> Any:
        if site not in self.sites:
            raise RepdispError(
                f"datastore {self.folder} was built for site(s) {', '.join(self.sites)}, not "
                f"{site}; choose one of those with --site or build one for {site}"
            )
        faiss = _faiss()
        name = f"index.{_site_file(site)}.faiss"
        try:
            index = faiss.read_index(str(self.folder / name))
        except RuntimeError:  # FAISS reports unreadable files this way
            raise self._fault(f"{name} is not a readable FAISS index") from None
        if index.ntotal != self.meta["n_keys"] or index.d != self.meta["dim"]:
            raise self._fault(
                f"{name} holds {index.ntotal} vectors of dimension {index.d}, the manifest says "
                f"{self.meta['n_keys']} of dimension {self.meta['dim']}"
            )
        if hasattr(index, "nprobe"):
            index.nprobe = nprobe
        return _on_gpu(index)


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1).encode()
    atomic_write(folder / "manifest.json", lambda f: f.write(text))


def _open_rows(path: Path, shape: tuple[int, ...], dtype: Any, fresh: bool) -> np.ndarray:
    if fresh or not path.exists():
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    arr = np.load(path, mmap_mode="r+")
    if arr.shape != shape or arr.dtype != dtype:
        raise RepdispError(f"{path} has shape {arr.shape} {arr.dtype}, expected {shape} {dtype}")
    return arr


def build_datastore(
    lm: LoadedModel,
    tokens: np.ndarray,
    folder: str | Path,
    *,
    sites: str | list[str] = "-1.ffn",
    source: str = "",
    context: int = 512,
    stride: int = 256,
    batch_size: int = 4,
    shard_windows: int = 64,
    index: str = "auto",
    progress: bool = True,
) -> BuildReport:
    """Fill (or resume) a datastore for ``sites`` over ``tokens`` in one forward pass, then index
    it. The keywords become a ``BuildSettings`` for ``run_build_datastore``."""
    return run_build_datastore(
        lm,
        tokens,
        folder,
        BuildSettings(context=context, stride=stride, batch_size=batch_size,
                      shard_windows=shard_windows, index=index),  # fmt: skip
        sites,
        source,
        progress,
    )


def run_build_datastore(
    lm: LoadedModel,
    tokens: np.ndarray,
    folder: str | Path,
    settings: BuildSettings,
    sites: str | list[str] = "-1.ffn",
    source: str = "",
    progress: bool = True,
) -> BuildReport:
    """``build_datastore`` on a ``BuildSettings`` (the commands call this)."""
    context, stride, batch_size = settings.context, settings.stride, settings.batch_size
    shard_windows, index = settings.shard_windows, settings.index
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    check_context(context, lm.max_len, lm.bos_id)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    site_list = lm.parse_sites(sites)
    names = [s.name for s in site_list]
    windows = plan_windows(len(tokens), context, stride)
    offsets = np.cumsum([0] + [e - n for _, e, n in windows])
    n_keys, dim = int(offsets[-1]), lm.d_model
    bos = lm.bos_id
    meta = {
        "version": _VERSION,
        "model": lm.name,
        "identity": lm.identity,
        "source": source,
        "tokens_sha256": _rows_sha(tokens.astype(np.int64)),
        "n_tokens": len(tokens),
        "context": context,
        "stride": stride,
        "bos": bos,
        "sites": names,
        "n_keys": n_keys,
        "dim": dim,
        "shard_windows": shard_windows,
    }
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text()) if path.exists() else None
        if manifest is not None and not isinstance(manifest.get("shards"), dict):
            raise ValueError("no shards record")
        if manifest is not None and not isinstance(manifest.get("meta"), dict):
            raise ValueError("no meta record")
    except (OSError, ValueError, AttributeError) as e:
        raise RepdispError(
            f"{path} is corrupt ({type(e).__name__}); delete {folder} or choose another --out"
        ) from None
    if manifest is not None and manifest.get("meta") != meta:
        raise RepdispError(
            f"{folder} holds a different datastore ({manifest['meta'].get('model')}, "
            f"{manifest['meta'].get('sites')}); choose another --out or delete it"
        )
    fresh = manifest is None
    manifest = manifest or {"meta": meta, "shards": {}, "index": {}, "complete": False}
    values = _open_rows(folder / "values.npy", (n_keys,), np.int32, fresh)
    keys = {
        s: _open_rows(folder / f"keys.{_site_file(s)}.npy", (n_keys, dim), np.float16, fresh)
        for s in names
    }
    shards = [
        list(range(i, min(i + shard_windows, len(windows))))
        for i in range(0, len(windows), shard_windows)
    ]
    computed = reused = 0
    fwd_s = write_s = 0.0
    bar = tqdm(total=n_keys, unit="key", disable=not progress, desc=f"datastore {lm.name}")
    try:
        for i, shard in enumerate(shards):
            lo, hi = int(offsets[shard[0]]), int(offsets[shard[-1] + 1])
            done = manifest["shards"].get(str(i))
            if (
                done
                and done.get("values") == _rows_sha(values[lo:hi])
                and all(done.get(s) == _rows_sha(keys[s][lo:hi]) for s in names)
            ):
                reused += 1
                note_finished()
                bar.update(hi - lo)
                continue
            fs, ws = _fill_shard(
                lm, tokens, [windows[w] for w in shard], offsets[shard], site_list, batch_size,
                values, keys,
            )  # fmt: skip
            fwd_s, write_s = fwd_s + fs, write_s + ws
            t0 = time.perf_counter()
            for arr in (values, *keys.values()):
                arr.flush()
            manifest["shards"][str(i)] = {"values": _rows_sha(values[lo:hi])} | {
                s: _rows_sha(keys[s][lo:hi]) for s in names
            }
            _write_manifest(folder, manifest)
            note_finished()
            write_s += time.perf_counter() - t0
            computed += 1
            bar.update(hi - lo)
    finally:
        bar.close()
    for s in names:
        if s not in manifest["index"]:
            faiss = _faiss()
            idx, info = build_index(keys[s], index)
            target = folder / f"index.{_site_file(s)}.faiss"
            data = faiss.serialize_index(idx)  # the bytes write_index would write
            atomic_write(target, lambda f, data=data: f.write(data.tobytes()))
            manifest["index"][s] = info | {"sha256": hashlib.sha256(data.tobytes()).hexdigest()}
            _write_manifest(folder, manifest)
    manifest["complete"] = True
    _write_manifest(folder, manifest)
    return BuildReport(
        folder=str(folder),
        n_tokens=len(tokens),
        n_keys=n_keys,
        sites=names,
        shards_computed=computed,
        shards_reused=reused,
        forward_seconds=fwd_s,
        write_seconds=write_s,
        index=manifest["index"],
        seconds=time.perf_counter() - t_start,
    )


def _fill_shard(
    lm: LoadedModel,
    tokens: np.ndarray,
    windows: list[tuple[int, int, int]],
    rows: np.ndarray,
    sites: list[Site],
    batch_size: int,
    values: np.ndarray,
    keys: dict[str, np.ndarray],
) -> tuple[float, float]:
    """Run one shard's ``windows`` (BOS ``lm.bos_id`` in front) and write their keys and values
    from row ``rows[j]`` on for window j; returns (forward s, write s)."""
    import torch

    fwd = write = 0.0
    for batch in _batches(windows, batch_size):
        ids, spans = _window_batch(tokens, [windows[j] for j in batch], lm.bos_id)
        t0 = time.perf_counter()
        states, _ = forward_sites(lm, ids, sites, perplexity=False)
        t1 = time.perf_counter()
        for j, (lo, hi) in zip(batch, spans, strict=True):
            row = int(rows[j])
            _, e, n = windows[j]
            values[row : row + hi - lo] = tokens[n:e]
            for s in sites:
                keys[s.name][row : row + hi - lo] = (
                    states[s.name][j - batch[0], lo:hi].to(torch.float16).cpu().numpy()
                )
        fwd, write = fwd + t1 - t0, write + time.perf_counter() - t1
    return fwd, write
