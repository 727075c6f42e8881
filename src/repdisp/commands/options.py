"""Option groups every command shares, declared once: one grammar for the whole CLI.

Grammar (the same in every command that has the option):

    --model SPEC         bundled name, model folder, .gguf file or hub id (repeat where a command
                         takes several models)
    --model-args K=V,..  revision, tokenizer, adapter (a PEFT adapter folder), attn_implementation,
                         device_map, dtype, max_memory (``0:20GiB;cpu:60GiB``), offload_folder:
                         passed to ``load_model`` as keyword arguments
    --device DEVICE      auto | cpu | cuda | cuda:N | mps
    --data SOURCE        where text goes in (repeat to join several sources where a command allows)
    --site SITE          repeatable, and each value may be a comma list: ``--site a,b --site c`` is
                         three sites; also TransformerLens names and ``hs:K`` HF indices
    --out DIR            a result folder. Omitted: a new folder ``repdisp-out/COMMAND-N`` (the
                         first N not taken; ``$REPDISP_OUT`` replaces ``repdisp-out``), so runs
                         never collide. Given: the command refuses to
                         start when DIR already holds its result file from an earlier run, unless
                         ``--overwrite``. Different commands may share one folder (their files have
                         different names), which is what ``repdisp report DIR`` renders.
    --num-seeds N        how many seeds (0..N-1) a repeated-draw protocol averages over
    --chunks N[,N..]     the N values (chunks per draw) of a dispersion profile

Help shows every default one way, ``(default: X)``, appended by ``HelpFormatter``.
The groups live in ``option_groups`` by subject (``grammar``, ``model``, ``data``,
``statistics``, ``output``) and are re-exported here, so ``from .options import X`` is the one
way commands reach them; this module keeps the run-time helpers that read the model and data
options (``check_data``, ``check_context``, ``model_from_args``). Settings objects are built once
from the flags (``sampling_from_args``, ``statistics_from_args``) and passed down whole.
Nothing here imports anything heavy: building the parser must stay fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from .option_groups.data import (
    DATA_HELP,
    SITE_HELP,
    SITE_NAMES,
    add_batch_option,
    add_data_options,
    add_sampling_options,
    add_seed_option,
    add_seeds_options,
    add_site_option,
    add_text_options,
    one_site,
    sampling_from_args,
    site_list,
    source_type,
)
from .option_groups.grammar import AppendAction, HelpFormatter, ListAction, Parser
from .option_groups.model import (
    DEFAULT_MODEL,
    DTYPES,
    MODEL_ARG_KEYS,
    MODEL_HELP,
    MODELS_HELP,
    add_device_option,
    add_model_options,
    device_type,
    parse_model_args,
)
from .option_groups.output import (
    OUT_ROOT,
    add_cache_options,
    add_output_options,
    add_tracking_options,
    check_out,
    check_out_folder,
    out_dir,
    report_to,
)
from .option_groups.statistics import (
    add_binning_options,
    add_bootstrap_option,
    statistics_from_args,
)

__all__ = [
    "DATA_HELP",
    "DEFAULT_MODEL",
    "DTYPES",
    "MODELS_HELP",
    "MODEL_ARG_KEYS",
    "MODEL_HELP",
    "OUT_ROOT",
    "SITE_HELP",
    "SITE_NAMES",
    "AppendAction",
    "HelpFormatter",
    "ListAction",
    "Parser",
    "add_batch_option",
    "add_binning_options",
    "add_bootstrap_option",
    "add_cache_options",
    "add_data_options",
    "add_device_option",
    "add_model_options",
    "add_output_options",
    "add_sampling_options",
    "add_seed_option",
    "add_seeds_options",
    "add_site_option",
    "add_text_options",
    "add_tracking_options",
    "check_context",
    "check_data",
    "check_out",
    "check_out_folder",
    "device_type",
    "model_from_args",
    "one_site",
    "out_dir",
    "parse_model_args",
    "report_to",
    "sampling_from_args",
    "site_list",
    "source_type",
    "statistics_from_args",
]

_source = source_type  # the older private name (commands.reproduce imports it)


def check_data(args: argparse.Namespace) -> None:
    """Read every text source of the command (``--data``, ``--eval-data``) before the model
    loads, so a missing or malformed file fails in a second, not after the model load. The
    texts are remembered by ``load_texts``, so the run does not read them again."""
    if getattr(args, "_data_checked", False) or not hasattr(args, "text_field"):
        return
    from ..core.corpus import load_texts

    args._data_checked = True
    sources: list[str] = []
    for name in ("data", "eval_data"):
        value = getattr(args, name, None)
        sources += value if isinstance(value, list) else [value] if value else []
    for spec in sources:
        head, sep, rng = spec.rpartition("@")  # knnlm's SOURCE@START:END token range
        if sep and ":" in rng and all(p.isdigit() or not p for p in rng.split(":", 1)):
            spec = head
        load_texts(
            spec,
            args.text_field,
            args.split,
            args.encoding_errors,
            getattr(args, "trust_remote_code", False),
        )


def check_context(lm: Any, flag: str, tokens: int) -> None:
    """Refuse a window longer than the model's context (``LoadedModel.check_window``)."""
    lm.check_window(tokens, flag)


def model_from_args(args: argparse.Namespace, spec: str | None = None) -> Any:
    """Load ``spec`` (default ``args.model``) with the model options of ``args``, after
    ``check_data``."""
    from ..core.models import load_model
    from ..core.precision import agree_dtype

    check_data(args)

    kwargs = dict(getattr(args, "model_args", None) or {})
    dtype = agree_dtype(args.dtype, kwargs.pop("dtype", None))
    return load_model(
        spec or args.model,
        args.device,
        dtype,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        **kwargs,
    )
