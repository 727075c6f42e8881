"""Load a causal LM by name: bundled, local folder, ``.gguf`` file, or hub id (``load_model``).

Bundled GGUF models, and any ``.gguf`` given by path, are dequantised once into a safetensors
cache under ``$REPDISP_HOME/models`` (``core.convert``); later loads read the cache in seconds.
``LoadedModel.identity`` (part of every shard cache key) is a content hash - ``core.identity``
for folders, the commit for hub models, a parameter hash for a model in memory (``as_loaded``) -
plus the loading options that change the computation and the dtype, so the same folder given by
two paths shares cached shards and any edit does not. ``--model-args`` add a separate tokenizer
(``tokenizer=``) or a PEFT adapter merged into the weights (``adapter=``, hashed by content).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .checkpoint import _TOKENIZER_FILES, _from_folder, _from_hub
from .convert import prepare, prepare_gguf
from .errors import RepdispError, first_line
from .hub import hub_access, is_hub_id
from .identity import file_fingerprint
from .loaded import LoadedModel
from .precision import MIXED, resolve_device, resolve_dtype
from .registry import BUNDLED, DEFAULT_MODEL


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
    max_memory: str | dict[Any, Any] | None = None,
    offload_folder: str | None = None,
) -> LoadedModel:
    """Load ``spec`` (bundled name, folder, .gguf file or hub id) in eval mode on ``device``.

    Parameters
    ----------
    spec : str
        A bundled name (``smollm2-135m``, ``gemma3-270m``), a model folder, a ``.gguf`` file or
        a hub id (``name`` or ``org/name``, ``core.hub.is_hub_id``).
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    dtype : str
        ``auto``, ``float32``, ``float16``, ``bfloat16`` or ``bf16-mixed`` (float32 weights,
        bfloat16 products under autocast).
    trust_remote_code, allow_pickle : bool
        Run a folder's custom model code; read pickled (non-safetensors) weights.
    device_map, max_memory, offload_folder
        accelerate's big-model placement (``device_map="auto"``): the weights split over the
        GPUs, then the CPU, then ``offload_folder`` on disk, each device holding at most its
        ``max_memory`` (``{0: "20GiB", "cpu": "60GiB"}`` or ``"0:20GiB;cpu:60GiB"``). Offloaded
        weights come in at each module's forward, so every site reads the real hidden state;
        the placement is not part of the identity (the same numbers, within float rounding).

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
    kind = _kind(spec, revision, adapter, device, device_map)
    if (max_memory or offload_folder) and not device_map:
        raise RepdispError("--model-args max_memory= and offload_folder= need device_map=auto")
    # the hub is probed before torch is imported: an unreachable one fails in seconds
    access = hub_access(spec, revision) if kind == "hub" else {}
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    path = Path(spec).expanduser()
    extra = {
        k: v
        for k, v in (
            ("revision", revision),
            ("attn_implementation", attn_implementation),
            ("device_map", device_map),
            ("max_memory", parse_max_memory(max_memory)),
            ("offload_folder", offload_folder),
        )
        if v
    }
    if kind == "bundled":
        folder = prepare(spec)
        model, tok, identity = _from_folder(folder, torch_dtype, False, False, extra)
    elif kind == "gguf":
        folder = prepare_gguf(path)
        model, tok, identity = _from_folder(folder, torch_dtype, False, False, extra)
    elif kind == "folder":
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
    else:
        model, tok, identity = _from_hub(
            spec, torch_dtype, trust_remote_code, allow_pickle, extra, access
        )
    if tokenizer or adapter:
        model, tok, identity = _apply_model_args(model, tok, identity, tokenizer, adapter, extra)
    identity += "".join(f":{k}={v}" for k, v in extra.items() if k not in _PLACEMENT)
    if device_map:
        dev = placed_device(model)
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


_PLACEMENT = ("device_map", "max_memory", "offload_folder")  # where, not what: not identity


def parse_max_memory(value: str | dict[Any, Any] | None) -> dict[Any, Any] | None:
    """``"0:20GiB;cpu:60GiB"`` (or a dict) -> ``{0: "20GiB", "cpu": "60GiB"}``: GPU index
    (``N`` or ``cuda:N``), ``cpu``, ``mps`` or ``disk`` to a size (``200KB``, ``20GiB``, bytes)."""
    if value is None or value == {}:
        return None
    if isinstance(value, str):
        items = [x.strip() for x in value.split(";") if x.strip()]
        if not all(":" in x for x in items):
            raise RepdispError(f"max_memory={value}: expected DEVICE:SIZE[;DEVICE:SIZE...]")
        value = dict(x.rsplit(":", 1) for x in items)
    from accelerate.utils import convert_file_size_to_int

    out: dict[Any, Any] = {}
    for key, size in value.items():
        k = str(key).strip().removeprefix("cuda:")
        if not (k.isdigit() or k in ("cpu", "mps", "disk")):
            raise RepdispError(f"max_memory: unknown device {key!r}; use N, cuda:N, cpu or disk")
        try:
            convert_file_size_to_int(size)
        except (ValueError, TypeError):
            raise RepdispError(f"max_memory: bad size {size!r} for {key}; e.g. 20GiB") from None
        out[int(k) if k.isdigit() else k] = size.strip() if isinstance(size, str) else size
    return out


def placed_device(model: Any) -> Any:
    """Where a model dispatched by accelerate takes its inputs: the execution device of the
    first module with a hook (weights offloaded to disk are on ``meta`` until their forward),
    else the first parameter's device."""
    import torch

    for module in model.modules():
        dev = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
        if dev is not None:
            return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    return next(model.parameters()).device


def _kind(
    spec: str, revision: str | None, adapter: str | None, device: str, device_map: str | None
) -> str:
    """``bundled``, ``gguf``, ``folder`` or ``hub``; a spec that is none of them, and options
    that contradict it or each other, are refused here, before anything loads."""
    if not isinstance(spec, str) or not spec.strip():
        raise RepdispError(f"model: expected a name, a path or a hub id, got {spec!r}")
    path = Path(spec).expanduser()
    if spec in BUNDLED:
        kind = "bundled"
    elif path.is_file() and path.suffix == ".gguf":
        kind = "gguf"
    elif path.is_dir():
        kind = "folder"
    elif path.exists():
        raise RepdispError(f"{spec} is a file but not a .gguf; pass a model folder or a .gguf file")
    elif is_hub_id(spec):
        kind = "hub"
    else:
        raise RepdispError(
            f"unknown model {spec!r}: not a bundled name ({', '.join(BUNDLED)}), an existing folder "
            "or .gguf file, or a hub id (name or org/name)"
        )
    if revision and kind != "hub":
        what = {"bundled": "a bundled model", "gguf": "a local .gguf file"}.get(kind, "a folder")
        raise RepdispError(
            f"--model-args revision={revision} applies only to hub ids; {spec} is {what}"
        )
    if device_map and device not in ("auto", None):
        raise RepdispError(
            f"--model-args device_map={device_map} and --device {device} disagree: device_map "
            "places the model itself; give one of them"
        )
    if adapter and not (Path(adapter).expanduser() / "adapter_config.json").exists():
        raise RepdispError(f"adapter {adapter}: no adapter_config.json (not a PEFT adapter folder)")
    return kind


def _apply_model_args(
    model: Any, tok: Any, identity: str, tokenizer: str | None, adapter: str | None, extra: Any
) -> tuple[Any, Any, str]:
    """A separate tokenizer and/or a PEFT adapter merged into the weights."""
    if tokenizer:
        from transformers import AutoTokenizer

        local = Path(tokenizer).expanduser().exists()
        access = hub_access(tokenizer) if not local and is_hub_id(tokenizer) else {}
        try:
            tok = AutoTokenizer.from_pretrained(tokenizer, **access)
        except Exception as e:  # missing folder, no internet, no such repo
            raise RepdispError(f"cannot load tokenizer {tokenizer!r}: {first_line(e)}") from e
        identity += f":tokenizer={tokenizer}"
    if adapter:
        folder = Path(adapter).expanduser()  # holds adapter_config.json (checked by _kind)
        try:
            from peft import PeftModel
        except ImportError:
            raise RepdispError("adapter= needs PEFT: pip install peft") from None
        try:
            model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        except (ValueError, OSError, RuntimeError, KeyError) as e:
            raise RepdispError(f"cannot apply adapter {adapter}: {first_line(e)}") from e
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
