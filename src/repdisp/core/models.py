"""Models: the older single home of these names, re-exported from the files of each subject.

``core.home`` ($REPDISP_HOME), ``core.registry`` (bundled models), ``core.precision`` (device
and dtype), ``core.loaded`` (``LoadedModel``, the context-length rule), ``core.identity``
(content hashes), ``core.convert`` (GGUF to safetensors), ``core.checkpoint`` (load checks),
``core.loading`` (``load_model``, ``as_loaded``) and ``core.model_config`` (facts from the
config alone); ``from repdisp.core.models import X`` keeps working.
"""

from __future__ import annotations

from .checkpoint import safetensors_dtypes
from .convert import prepare, prepare_gguf
from .errors import RepdispError
from .home import cache_root, converted_dir
from .identity import file_fingerprint, file_hashes, folder_identity
from .loaded import LoadedModel, check_window
from .loading import as_loaded, load_model
from .model_config import model_config
from .precision import DEVICES, DTYPES, MIXED, agree_dtype, resolve_device, resolve_dtype
from .registry import BUNDLED, DEFAULT_MODEL, BundledModel, list_bundled

__all__ = [
    "BUNDLED",
    "DEFAULT_MODEL",
    "DEVICES",
    "DTYPES",
    "MIXED",
    "BundledModel",
    "LoadedModel",
    "RepdispError",
    "as_loaded",
    "cache_root",
    "agree_dtype",
    "check_window",
    "converted_dir",
    "file_fingerprint",
    "file_hashes",
    "folder_identity",
    "list_bundled",
    "load_model",
    "model_config",
    "prepare",
    "prepare_gguf",
    "resolve_device",
    "resolve_dtype",
    "safetensors_dtypes",
]
