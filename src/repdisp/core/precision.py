"""Device and dtype of a model run: the names ``--device`` / ``--dtype`` accept and what they mean.

Devices: ``auto`` (CUDA when torch sees one, else the CPU), ``cpu``, ``cuda``, ``cuda:N``,
``mps``. Under ``torchrun``/``accelerate launch`` (``LOCAL_RANK`` set) ``cuda`` is the GPU of
that rank. Dtypes: ``float32``, ``bfloat16``, ``float16`` load the weights in that type and run
everything in it; ``auto`` is bfloat16 on a CUDA device that supports it, float32 otherwise;
``bf16-mixed`` (``MIXED``) keeps float32 weights and runs the forward under ``torch.autocast``
with bfloat16 (see ``core.loaded.LoadedModel.inference``). A device or dtype that is unknown or
absent is a one-line ``RepdispError``.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import RepdispError

DTYPES = ("auto", "float32", "bfloat16", "float16", "bf16-mixed")
MIXED = "bf16-mixed"  # float32 weights and residual stream, matrix products in bfloat16 (autocast)
DEVICES = ("auto", "cpu", "cuda", "mps")


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


def agree_dtype(flag: str | None, model_arg: str | None) -> str:
    """The dtype when ``--dtype`` (``flag``, ``auto`` = not chosen) and ``--model-args dtype=``
    both may give one: either alone, or both the same; two different ones are an error."""
    flag = flag or "auto"
    if model_arg is None or model_arg == flag:
        return flag
    if flag != "auto":
        raise RepdispError(
            f"--model-args dtype={model_arg} and --dtype {flag} disagree: give one of them"
        )
    return model_arg
