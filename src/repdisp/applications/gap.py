"""Dispersion gap for model selection (§3.2): rank checkpoints from one weight matrix.

Only the output-embedding matrix is read (``lm_head.weight``; the input embeddings when they are
tied), and only the rows of the tokens used:

    safetensors  ``safe_open`` memory-maps the file; ``get_slice`` reads single rows
    GGUF         the header is parsed for the tensor table only (``GGUFReader`` would also
                 materialise the whole tokenizer vocabulary, seconds to minutes); the needed rows
                 of ``output.weight`` (or ``token_embd.weight``) are read through a memory map
                 and dequantised with ``gguf.quants.dequantize``

No model object is built and nothing is run through the network.

Token sets: a domain set T and a reference set T' (everyday words by default), given as words.
Each word maps to ONE token id through the checkpoint's own tokenizer: `` word`` (with a leading
space, how words appear inside text) if that is a single token, else ``word`` if that is; words
that are several tokens either way are skipped and counted (``skipped``). Duplicate ids count once.

Per checkpoint, for cosine distance (the paper's metric) and Euclidean distance:

    within(T)       mean pairwise distance among the domain rows (i < j)
    within(T')      the same among the reference rows
    between(T, T')  mean distance over all pairs (t in T, t' in T')
    G               within(T) + between(T, T')
"""

from __future__ import annotations

import builtins
import hashlib
import json
import keyword
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import RepdispError
from ..core.geometry import CosineStats, dispersion, mean_euclidean
from ..core.models import BUNDLED, cache_root, file_fingerprint, prepare

METRICS = ("cosine", "euclidean")

_LEGAL = """plaintiff defendant court judge jury verdict statute contract tort liability
negligence appeal appellate counsel attorney lawyer litigation lawsuit damages injunction
jurisdiction precedent testimony witness evidence hearing trial indictment prosecution
prosecutor felony misdemeanor sentence parole probation custody warrant subpoena affidavit
deposition settlement arbitration mediation clause breach remedy covenant easement lease
landlord tenant copyright patent trademark infringement fraud perjury bail acquittal
conviction habeas amendment constitution legislation regulation ordinance enforcement
compliance fiduciary trustee estate probate heir plea guilty innocent lawful unlawful legal
illegal rights claim claimant respondent petitioner petition motion docket ruling
statutory liable indemnity"""

_EVERYDAY = """house water food table chair door window car street city tree dog cat bird
book paper phone friend family mother father child school work money time day night morning
evening week year today tomorrow yesterday home room bed kitchen bread milk coffee tea apple
sugar salt shirt shoe hat coat rain snow sun wind cold hot warm happy sad good bad big small
long short new old young fast slow walk run eat drink sleep talk read write sing play cook
clean buy sell open close give take come go see look hear listen feel think know want like
love help start stop wait ask answer call live music movie game ball garden park shop store
market bus train road bridge river hill sea beach flower grass color red blue green white
black light dark hand head face eye ear mouth hair foot leg heart smile laugh"""

DOMAINS = {
    "digits": [str(i) for i in range(100)],
    "python": sorted(
        set(keyword.kwlist)
        | {n for n in dir(builtins) if n.islower() and not n.startswith("_") and n.isalpha()}
    ),
    "legal": _LEGAL.split(),
}
REFERENCES = {"everyday": _EVERYDAY.split()}

_HEAD_KEYS = ("lm_head.weight", "embed_out.weight", "output.weight")
_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")


def load_words(spec: str, builtin: dict[str, list[str]]) -> tuple[str, list[str]]:
    """A built-in list name or a text file (whitespace- or line-separated words)."""
    if spec in builtin:
        return spec, builtin[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise RepdispError(f"word list {spec!r}: not built in ({', '.join(builtin)}) nor a file")
    words = path.read_text(encoding="utf-8").split()
    if not words:
        raise RepdispError(f"word list {path} is empty")
    return path.stem, words


@dataclass
class TokenSet:
    name: str
    ids: np.ndarray
    words: list[str]  # the word kept for each id
    skipped: list[str] = field(default_factory=list)  # multi-token words


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids without special tokens, from a ``tokenizers.Tokenizer`` or a transformers one."""
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        return tokenizer.encode(text, add_special_tokens=False).ids
    return tokenizer(text, add_special_tokens=False).input_ids


def token_set(tokenizer: Any, name: str, words: list[str]) -> TokenSet:
    """Map words to single token ids (`` word`` first, then ``word``); skip multi-token words."""
    ids: list[int] = []
    kept: list[str] = []
    skipped: list[str] = []
    for w in dict.fromkeys(words):
        for variant in (" " + w, w):
            enc = _encode(tokenizer, variant)
            if len(enc) == 1:
                if enc[0] not in ids:
                    ids.append(enc[0])
                    kept.append(w)
                break
        else:
            skipped.append(w)
    if len(ids) < 2:
        raise RepdispError(f"token set {name!r} has {len(ids)} single-token words; need 2+")
    return TokenSet(name, np.array(ids, dtype=np.int64), kept, skipped)


@dataclass
class _GGUFTensor:
    shape: tuple[int, int]  # (rows, cols) in numpy order
    qtype: Any  # gguf.GGMLQuantizationType
    offset: int  # absolute byte offset of the data in the file
    row_bytes: int


_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _gguf_tensor_infos(path: Path) -> dict[str, _GGUFTensor]:
    """Where each 2-D tensor's data lies in a GGUF file, from its header alone.

    ``gguf.GGUFReader`` builds numpy views of every metadata value, including the tokenizer's
    vocabulary (seconds to minutes for large vocabularies); here the metadata is skipped over
    and only the tensor table is read. The row layout follows ``gguf.GGML_QUANT_SIZES``."""
    import mmap
    import struct

    import gguf

    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise RepdispError(f"{path} is not a GGUF file (bad magic bytes)")
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
                if itype in _GGUF_SIZES:
                    return pos + count * _GGUF_SIZES[itype]
                for _ in range(count):
                    pos = skip(itype, pos)
                return pos
            return pos + _GGUF_SIZES[vtype]

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
        out[name] = _GGUFTensor(
            (int(dims[1]), int(dims[0])), qt, start + offset, dims[0] // block * size
        )
    return out


class EmbeddingRows:
    """Lazy reader of the output-embedding rows of one checkpoint (safetensors or GGUF)."""

    def __init__(self, spec: str):
        self.spec = spec
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
        infos = _gguf_tensor_infos(path)
        self.tensor = "output.weight" if "output.weight" in infos else "token_embd.weight"
        if self.tensor not in infos:
            raise RepdispError(f"{path}: no output.weight nor token_embd.weight tensor")
        self.tied = self.tensor == "token_embd.weight"
        self._gguf = infos[self.tensor]
        self.kind = "gguf"

    def tokenizer_key(self) -> str:
        """Identifies the tokenizer: checkpoints with equal keys share one tokenizer load and
        the cached token sets. The sha256 of ``tokenizer.json``, else the file's fingerprint."""
        tj = self.path / "tokenizer.json" if self.kind == "safetensors" else None
        if tj is not None and tj.exists():
            return hashlib.sha256(tj.read_bytes()).hexdigest()
        return file_fingerprint(self.path) if self.kind == "gguf" else str(self.path.resolve())

    def tokenizer(self) -> Any:
        """The checkpoint's own tokenizer: ``tokenizer.json`` through the ``tokenizers`` library
        (fastest), else transformers (from the folder, or from the GGUF metadata)."""
        from transformers import AutoTokenizer

        try:
            if self.kind == "safetensors" and (self.path / "tokenizer.json").exists():
                from tokenizers import Tokenizer

                return Tokenizer.from_file(str(self.path / "tokenizer.json"))
            if self.kind == "gguf":
                return AutoTokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name)
            return AutoTokenizer.from_pretrained(self.path)
        except Exception as e:  # tokenizers raises its own types
            raise RepdispError(f"cannot load the tokenizer of {self.spec}: {e}") from None

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """float64 rows ``ids`` of the matrix; nothing else is read or dequantised."""
        ids = np.asarray(ids, dtype=np.int64)
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


def cosine_between(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine distance over all pairs (a_i, b_j), O((n + m)·d): 1 - (Σû)·(Σv̂)/(n m)."""
    sa, sb = CosineStats().update(a), CosineStats().update(b)
    return 1.0 - float(sa.total @ sb.total) / (sa.count * sb.count)


def euclidean_between(a: np.ndarray, b: np.ndarray, block: int = 1024) -> float:
    """Exact mean Euclidean distance over all pairs (a_i, b_j), in blocks of rows."""
    total = 0.0
    sb = (b * b).sum(1)
    for i in range(0, len(a), block):
        x = a[i : i + block]
        d2 = (x * x).sum(1)[:, None] + sb[None, :] - 2.0 * x @ b.T
        total += float(np.sqrt(np.maximum(d2, 0.0)).sum())
    return total / (len(a) * len(b))


@dataclass
class GapComponents:
    within_domain: float
    within_reference: float
    between: float
    gap: float = field(init=False)

    def __post_init__(self) -> None:
        self.gap = self.within_domain + self.between


def gap_components(domain: np.ndarray, reference: np.ndarray, metric: str) -> GapComponents:
    if metric == "cosine":
        return GapComponents(
            dispersion(domain), dispersion(reference), cosine_between(domain, reference)
        )
    if metric == "euclidean":
        return GapComponents(
            mean_euclidean(domain), mean_euclidean(reference), euclidean_between(domain, reference)
        )
    raise RepdispError(f"unknown metric {metric!r}; choose {', '.join(METRICS)}")


@dataclass
class CheckpointGap:
    model: str
    source: str  # safetensors | gguf
    tensor: str
    tied: bool
    matrix_shape: tuple[int, int]
    n_domain: int
    n_reference: int
    skipped_domain: list[str]
    skipped_reference: list[str]
    cosine: GapComponents
    euclidean: GapComponents
    accuracy: float | None = None

    def row(self) -> dict[str, Any]:
        out = {
            "model": self.model,
            "source": self.source,
            "tensor": self.tensor,
            "n_domain": self.n_domain,
            "n_reference": self.n_reference,
            "n_skipped_domain": len(self.skipped_domain),
            "n_skipped_reference": len(self.skipped_reference),
        }
        for m in METRICS:
            c: GapComponents = getattr(self, m)
            out |= {
                f"{m}_within_domain": c.within_domain,
                f"{m}_within_reference": c.within_reference,
                f"{m}_between": c.between,
                f"{m}_gap": c.gap,
            }
        return out | {"accuracy": self.accuracy}


def _matrix_shape(src: EmbeddingRows) -> tuple[int, int]:
    if src.kind == "gguf":
        return src._gguf.shape
    from safetensors import safe_open

    with safe_open(src._file, framework="pt") as h:
        return tuple(h.get_slice(src.tensor).get_shape())


def _token_sets(
    src: EmbeddingRows,
    domain_words: tuple[str, list[str]],
    reference_words: tuple[str, list[str]],
    tokenizers: dict[str, Any],
) -> tuple[TokenSet, TokenSet]:
    """Token sets of a checkpoint, cached on disk under ``$REPDISP_HOME/gap_tokens`` by
    (tokenizer, word lists): loading a large tokenizer costs more than the whole gap."""
    key = src.tokenizer_key()
    spec = json.dumps([key, domain_words, reference_words])
    path = cache_root() / "gap_tokens" / f"{hashlib.sha256(spec.encode()).hexdigest()[:20]}.json"
    if path.exists():
        try:
            return tuple(
                TokenSet(d["name"], np.array(d["ids"], dtype=np.int64), d["words"], d["skipped"])
                for d in json.loads(path.read_text())
            )
        except (ValueError, KeyError, TypeError):
            pass  # a broken cache file only costs the tokenizer load
    if key not in tokenizers:
        tokenizers[key] = src.tokenizer()
    sets = (token_set(tokenizers[key], *domain_words), token_set(tokenizers[key], *reference_words))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps([{**vars(t), "ids": t.ids.tolist()} for t in sets]))
    os.replace(tmp, path)
    return sets


def checkpoint_gap(
    spec: str,
    domain_words: tuple[str, list[str]],
    reference_words: tuple[str, list[str]],
    tokenizers: dict[str, Any] | None = None,
) -> CheckpointGap:
    """Gap components of one checkpoint, reading only the rows of the two token sets.
    ``tokenizers`` caches loaded tokenizers by ``tokenizer_key`` across checkpoints."""
    src = EmbeddingRows(spec)
    t, r = _token_sets(src, domain_words, reference_words, tokenizers if tokenizers else {})
    rows = src.rows(np.concatenate([t.ids, r.ids]))
    dom, ref = rows[: len(t.ids)], rows[len(t.ids) :]
    return CheckpointGap(
        spec,
        src.kind,
        src.tensor,
        src.tied,
        _matrix_shape(src),
        len(t.ids),
        len(r.ids),
        t.skipped,
        r.skipped,
        gap_components(dom, ref, "cosine"),
        gap_components(dom, ref, "euclidean"),
    )


@dataclass
class GapResult:
    domain: str
    reference: str
    metric: str  # the one used for ranking and correlations
    checkpoints: list[CheckpointGap]
    ranking: list[str]  # highest gap first
    spearman: Any = None
    kendall: Any = None
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        m = self.metric
        lines = [
            f"domain {self.domain} vs reference {self.reference}; metric {m}; G = within(T) + "
            "between(T,T')",
            f"{'model':<44} {'src':<11} {'|T|':>4} {'|T`|':>4} {'within T':>9} {'within T`':>9} "
            f"{'between':>9} {'G':>9} {'acc':>6}",
        ]
        for c in self.checkpoints:
            g: GapComponents = getattr(c, m)
            acc = "" if c.accuracy is None else f"{c.accuracy:6.2f}"
            lines.append(
                f"{c.model[-44:]:<44} {c.source:<11} {c.n_domain:>4} {c.n_reference:>4} "
                f"{g.within_domain:9.4f} {g.within_reference:9.4f} {g.between:9.4f} "
                f"{g.gap:9.4f} {acc:>6}"
            )
        lines.append("ranking (G, high to low): " + " > ".join(self.ranking))
        for c in (self.spearman, self.kendall):
            if c is not None:
                lines.append(f"G vs accuracy: {c}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def gap(
    models: list[str],
    domain: str,
    reference: str = "everyday",
    metric: str = "cosine",
    accuracy: dict[str, float] | None = None,
) -> GapResult:
    """Gap of every checkpoint, their ranking by G, and G-vs-accuracy rank correlations."""
    from ..core.stats import correlation

    if metric not in METRICS:
        raise RepdispError(f"unknown metric {metric!r}; choose {', '.join(METRICS)}")
    dom, ref = load_words(domain, DOMAINS), load_words(reference, REFERENCES)
    accuracy = accuracy or {}
    unknown = set(accuracy) - set(models)
    if unknown:
        raise RepdispError(f"--accuracy names models not given with --model: {sorted(unknown)}")
    ckpts, tokenizers = [], {}
    for spec in models:
        c = checkpoint_gap(spec, dom, ref, tokenizers)
        c.accuracy = accuracy.get(spec)
        ckpts.append(c)
    ranking = [c.model for c in sorted(ckpts, key=lambda c: -getattr(c, metric).gap)]
    res = GapResult(dom[0], ref[0], metric, ckpts, ranking)
    with_acc = [c for c in ckpts if c.accuracy is not None]
    if len(with_acc) >= 3:
        g = [getattr(c, metric).gap for c in with_acc]
        a = [c.accuracy for c in with_acc]
        res.spearman = correlation(g, a, "spearman")
        res.kendall = correlation(g, a, "kendall")
    elif accuracy:
        res.notes.append(f"{len(with_acc)} models with accuracy: correlation needs at least 3")
    if len({c.matrix_shape for c in ckpts}) > 1:
        res.notes.append(
            "checkpoints have different vocabularies/widths: token sets differ (see n_domain, "
            "skipped) and Euclidean values depend on each model's embedding scale"
        )
    return res


def plot_gap(res: GapResult):
    """Fig. 9 style: D-D (within T), D-NM (between T, T') and gap bars; accuracy as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.5, 2.2 * len(res.checkpoints)), 3.6))
    x = np.arange(len(res.checkpoints))
    comps = [getattr(c, res.metric) for c in res.checkpoints]
    for k, (label, vals) in enumerate(
        (
            ("D-D (within T)", [g.within_domain for g in comps]),
            ("D-NM (between T,T')", [g.between for g in comps]),
            ("Gap G", [g.gap for g in comps]),
        )
    ):
        ax.bar(x + (k - 1) * 0.27, vals, width=0.27, label=label)
    names = [f"{Path(c.model).stem[:24]}\n({c.source})" for c in res.checkpoints]
    ax.set_xticks(x, names, fontsize=7)
    ax.set_ylabel(f"{res.metric} distance")
    ax.set_title(f"dispersion gap: {res.domain} vs {res.reference}")
    ax.legend(fontsize=7, loc="upper left")
    if any(c.accuracy is not None for c in res.checkpoints):
        ax2 = ax.twinx()
        acc = [np.nan if c.accuracy is None else c.accuracy for c in res.checkpoints]
        ax2.plot(x, acc, "k-o", label="accuracy")
        ax2.set_ylabel("accuracy")
        ax2.legend(fontsize=7, loc="upper right")
    return fig


def parse_accuracy(items: list[str] | None) -> dict[str, float]:
    """``A=35.0,B=49.8`` (repeatable) into {model: accuracy}."""
    out: dict[str, float] = {}
    for part in (p for item in items or [] for p in item.split(",") if p.strip()):
        name, sep, value = part.rpartition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise RepdispError(f"--accuracy entries look like MODEL=NUMBER, got {part!r}") from None
    return out
