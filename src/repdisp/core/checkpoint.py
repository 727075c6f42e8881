"""Reading a checkpoint with transformers, and refusing one that does not fill the model exactly.

Before: a folder must hold ``config.json`` and weights; pickled weights (``.bin``/``.pt``) are
refused unless ``allow_pickle`` (and then go through ``torch.load(weights_only=True)``, which
unpickles tensors only); remote code runs only with ``trust_remote_code``. After
(``_check_loading``): tensors missing (they would stay randomly initialised), unexpected,
of another shape, or stored as integers where the model holds floats (they would be cast
silently) are one ``RepdispError`` naming them; quantised checkpoints skip the dtype check.
transformers' own multi-line load report is silenced (``_quiet_transformers``).

``_from_folder`` returns (model, tokenizer, ``folder_identity``); ``_from_hub`` returns
(model, tokenizer, ``hub:REPO@COMMIT``).
"""

from __future__ import annotations

import contextlib
import json
import pickle
import struct
from pathlib import Path
from typing import Any

from .errors import RepdispError, first_line
from .hub import offline
from .identity import folder_identity
from .registry import BUNDLED


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
        raise RepdispError(f"{path} is not a valid safetensors file: {first_line(e)}") from e


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
        raise RepdispError(f"cannot load model from {folder}: {first_line(e)}{hint}") from e
    _check_loading(str(folder), model, info, weights)
    return model, tok, folder_identity(folder, weights)


def _from_hub(
    repo: str,
    dtype: Any,
    trust_remote_code: bool,
    allow_pickle: bool,
    extra: Any = None,
    access: Any = None,
) -> Any:
    """``access``: extra options of both reads (``local_files_only`` when the hub is down but
    the repo is cached, ``core.hub.hub_access``); the tokenizer is read at the same revision."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {**(extra or {}), **(access or {})}
    both = {k: v for k, v in extra.items() if k in ("revision", "local_files_only")}
    try:
        tok = AutoTokenizer.from_pretrained(repo, trust_remote_code=trust_remote_code, **both)
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                repo,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                use_safetensors=None if allow_pickle else True,
                weights_only=True,
                output_loading_info=True,
                **extra,
                ignore_mismatched_sizes=True,
            )
    except Exception as e:  # network, auth and missing-file errors all arrive here
        if offline() or extra.get("local_files_only"):
            raise RepdispError(
                f"{repo!r} is not in the local hub cache and the hub is not used (HF_HUB_OFFLINE "
                "or no connection): download it once online, or pass a local model folder"
            ) from e
        raise RepdispError(
            f"cannot load {repo!r} from the Hugging Face hub ({first_line(e)}): no such repo, "
            f"no access, or no safetensors weights. Bundled models: {', '.join(BUNDLED)}"
        ) from e
    _check_loading(repo, model, info, [])
    return model, tok, f"hub:{repo}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"
