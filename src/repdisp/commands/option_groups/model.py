"""Model options: ``--model SPEC`` (one, or repeatable), ``--model-args K=V,..`` (revision,
tokenizer, adapter, attn_implementation, device_map, dtype, max_memory, offload_folder: keyword
arguments of ``load_model``; ``max_memory=0:20GiB;cpu:60GiB`` lists devices with ``;``), ``--device`` (auto | cpu | cuda | cuda:N | mps), ``--dtype``,
``--trust-remote-code``, ``--allow-pickle``. Values are checked while the command line is parsed
(argparse's one-line error); loading lives in ``options.model_from_args``."""

from __future__ import annotations

import argparse
import re
from typing import Any

from .. import checks
from .grammar import AppendAction

DEFAULT_MODEL = "smollm2-135m"  # core.models.DEFAULT_MODEL; tests/test_help.py checks they agree
DTYPES = ("auto", "float32", "bfloat16", "float16", "bf16-mixed")
MODEL_ARG_KEYS = (
    "revision",
    "tokenizer",
    "adapter",
    "attn_implementation",
    "device_map",
    "dtype",
    "max_memory",
    "offload_folder",
)
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

MODEL_HELP = "bundled name (smollm2-135m, gemma3-270m), model folder, .gguf file or hub id ORG/NAME"
MODELS_HELP = MODEL_HELP + "; repeat for several"

_model_spec = checks.nonempty("a bundled name, a folder, a .gguf file or a hub id")


def device_type(text: str) -> str:
    if not _DEVICE_RE.match(text):
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}; choose auto, cpu, cuda, cuda:N or mps"
        )
    return text


def parse_model_args(text: str) -> dict[str, str]:
    """``revision=main,adapter=./lora`` -> {"revision": "main", "adapter": "./lora"}."""
    out: dict[str, str] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not value.strip():
            raise argparse.ArgumentTypeError(f"--model-args wants KEY=VALUE items, got {item!r}")
        if key not in MODEL_ARG_KEYS:
            raise argparse.ArgumentTypeError(
                f"unknown --model-args key {key!r}; valid: {', '.join(MODEL_ARG_KEYS)}"
            )
        if key in out and out[key] != value.strip():
            raise argparse.ArgumentTypeError(
                f"--model-args {key}={out[key]} and {key}={value.strip()} disagree: give one"
            )
        if key == "dtype" and value.strip() not in DTYPES:
            raise argparse.ArgumentTypeError(
                f"--model-args dtype={value.strip()}: choose one of {', '.join(DTYPES)}"
            )
        out[key] = value.strip()
    return out


def add_model_options(
    p: argparse.ArgumentParser,
    multiple: bool = False,
    loading: bool = True,
    help: str | None = None,
) -> argparse._ArgumentGroup:
    """--model (one or several), and, when ``loading``, --model-args --device --dtype
    --trust-remote-code --allow-pickle."""
    g = p.add_argument_group("model options")
    if multiple:
        g.add_argument(
            "--model",
            action=AppendAction,
            default=[DEFAULT_MODEL],
            type=_model_spec,
            metavar="MODEL",
            help=help or MODELS_HELP,
        )
    else:
        g.add_argument(
            "--model",
            default=DEFAULT_MODEL,
            type=_model_spec,
            metavar="MODEL",
            help=help or MODEL_HELP,
        )
    if not loading:
        return g
    g.add_argument(
        "--model-args",
        type=parse_model_args,
        default=None,
        metavar="K=V,...",
        help="loader options: "
        + ", ".join(MODEL_ARG_KEYS)
        + " (adapter = a PEFT adapter folder; device_map=auto with max_memory=0:20GiB;cpu:60GiB"
        + " and offload_folder=DIR splits a big model over devices, CPU and disk)",
    )
    add_device_option(g)
    g.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="weights dtype; auto = bfloat16 on CUDA, float32 elsewhere; bf16-mixed = float32 "
        "weights with bfloat16 matrix products (autocast)",
    )
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a hub model to run its own code (off by default)",
    )
    g.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow pickled .bin/.pt weights (refused by default)",
    )
    return g


def add_device_option(g: Any) -> None:
    g.add_argument(
        "--device",
        default="auto",
        type=device_type,
        metavar="DEVICE",
        help="auto, cpu, cuda, cuda:N or mps; auto = the first GPU if there is one",
    )
