"""Option groups every command shares, declared once: one grammar for the whole CLI.

Grammar (the same in every command that has the option):

    --model SPEC         bundled name, model folder, .gguf file or hub id (repeat where a command
                         takes several models)
    --model-args K=V,..  revision, tokenizer, adapter (a PEFT adapter folder), attn_implementation,
                         device_map, dtype: passed to ``load_model`` as keyword arguments
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
This module imports nothing heavy: building the parser must stay fast.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError
from . import checks

DEFAULT_MODEL = "smollm2-135m"  # core.models.DEFAULT_MODEL; tests/test_help.py checks they agree
DTYPES = ("auto", "float32", "bfloat16", "float16", "bf16-mixed")
OUT_ROOT = "repdisp-out"
MODEL_ARG_KEYS = ("revision", "tokenizer", "adapter", "attn_implementation", "device_map", "dtype")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

MODEL_HELP = "bundled name (smollm2-135m, gemma3-270m), model folder, .gguf file or hub id ORG/NAME"
MODELS_HELP = MODEL_HELP + "; repeat for several"
DATA_HELP = (
    "text source: python-docs | python-code | FILE or FOLDER (.txt .jsonl .csv .parquet) | "
    "hf:NAME[:CONFIG]"
)
SITE_NAMES = (
    "embed, I.attn, I.ffn (I may be negative), final, all, all.attn, everything; TransformerLens "
    "names (blocks.I.hook_resid_mid) and hs:K (HF hidden_states[K]) also work; repeat or give a "
    "comma list"
)
SITE_HELP = "site(s) to read: " + SITE_NAMES


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option whose default is a value (not None, not a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and "(default: " not in text
            and not any(default is x for x in (None, False, True, argparse.SUPPRESS))
            and action.nargs != 0
        ):
            if isinstance(default, (list, tuple)):
                default = ",".join(str(x) for x in default)
            text += f" (default: {str(default).replace('%', '%%')})"
        return text


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose sub-parsers and help all use ``HelpFormatter``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


# ---------------------------------------------------------------- value parsers (type=)

_model_spec = checks.nonempty("a bundled name, a folder, a .gguf file or a hub id")
_source = checks.nonempty("a file, a folder, a built-in or hf:NAME")


def device_type(text: str) -> str:
    if not _DEVICE_RE.match(text):
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}; choose auto, cpu, cuda, cuda:N or mps"
        )
    return text


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of numbers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


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
        if key == "dtype" and value.strip() not in DTYPES:
            raise argparse.ArgumentTypeError(
                f"--model-args dtype={value.strip()}: choose one of {', '.join(DTYPES)}"
            )
        out[key] = value.strip()
    return out


class ListAction(argparse.Action):
    """Repeatable option whose values may also be comma lists; the first use replaces the default.

    ``--site a,b --site c`` -> ["a", "b", "c"].
    """

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        current = getattr(namespace, self.dest, None)
        if current is None or current is self.default:
            current = []
        items = [x.strip() for x in str(values).split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentError(self, "expected a value, got an empty list")
        setattr(namespace, self.dest, [*current, *items])


class AppendAction(argparse.Action):
    """Repeatable option (no comma splitting: paths and specs may hold commas); the first use
    replaces the default."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        current = getattr(namespace, self.dest, None)
        if current is None or current is self.default:
            current = []
        setattr(namespace, self.dest, [*current, values])


def site_list(values: str | list[str] | None) -> list[str]:
    """Flatten repeated and comma-separated site values (also usable from Python)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [s.strip() for v in values for s in str(v).split(",") if s.strip()]


# ---------------------------------------------------------------- option groups


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
        help="loader options: " + ", ".join(MODEL_ARG_KEYS) + " (adapter = a PEFT adapter folder)",
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
        load_texts(spec, args.text_field, encoding_errors=args.encoding_errors)


def check_context(lm: Any, flag: str, tokens: int) -> None:
    """Refuse a window longer than the model's context (position embeddings would run out)."""
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and tokens > limit:
        raise RepdispError(f"{flag} {tokens} exceeds the model's context of {limit} tokens")


def model_from_args(args: argparse.Namespace, spec: str | None = None) -> Any:
    """Load ``spec`` (default ``args.model``) with the model options of ``args``, after
    ``check_data``."""
    from ..core.models import load_model

    check_data(args)

    kwargs = dict(getattr(args, "model_args", None) or {})
    dtype = kwargs.pop("dtype", args.dtype)
    return load_model(
        spec or args.model,
        args.device,
        dtype,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        **kwargs,
    )


def add_data_options(
    p: argparse.ArgumentParser,
    multiple: bool = False,
    default: str | None = "python-docs",
    required: bool = False,
    help: str | None = None,
    text_options: bool = True,
) -> argparse._ArgumentGroup:
    """--data (one source, or repeatable with ``multiple``), --text-field, --encoding-errors."""
    g = p.add_argument_group("data options")
    text = help or DATA_HELP
    if multiple:
        g.add_argument(
            "--data",
            action=AppendAction,
            default=None if default is None else [default],
            required=required,
            type=_source,
            metavar="SOURCE",
            help=text + "; repeat to join several",
        )
    else:
        g.add_argument(
            "--data", default=default, required=required, type=_source, metavar="SOURCE", help=text
        )
    if text_options:
        add_text_options(g)
    return g


def add_text_options(g: Any) -> None:
    g.add_argument(
        "--text-field",
        default="text",
        help="column holding the text in .jsonl/.csv/.parquet sources",
    )
    g.add_argument(
        "--encoding-errors",
        default="strict",
        choices=("strict", "replace"),
        help="bytes that are not UTF-8: strict = stop with an error, replace = U+FFFD",
    )
    g.add_argument("--split", help="split of an hf: dataset (default: test)")


def add_sampling_options(
    p: argparse.ArgumentParser,
    segments: int | None = 200,
    seq_len: int | None = 256,
    skip_first: bool = True,
) -> argparse._ArgumentGroup:
    """--segments --seq-len --seed --batch-size [--skip-first]."""
    g = p.add_argument_group("sampling options")
    if segments is not None:
        g.add_argument(
            "--segments", type=checks.int_at_least(2), default=segments, help="segments to sample"
        )
    if seq_len is not None:
        g.add_argument(
            "--seq-len", type=checks.int_at_least(2), default=seq_len, help="tokens per segment"
        )
    add_seed_option(g)
    add_batch_option(g)
    if skip_first:
        g.add_argument(
            "--skip-first",
            type=checks.nonneg_int,
            default=1,
            help="positions left out of token pooling: the BOS or outlier first token",
        )
    return g


def add_seed_option(g: Any, help: str = "sampling seed") -> None:
    g.add_argument("--seed", type=checks.seed, default=0, help=help)


def add_batch_option(g: Any) -> None:
    g.add_argument(
        "--batch-size", type=checks.positive_int, default=8, help="sequences per forward pass"
    )


def add_seeds_options(g: Any, default: int) -> None:
    """--num-seeds N (seeds 0..N-1); ``--seeds`` is kept as a hidden, deprecated spelling."""
    g.add_argument(
        "--num-seeds",
        type=checks.positive_int,
        default=default,
        metavar="N",
        help="repeat the draw with seeds 0..N-1 and report mean and spread",
    )
    g.add_argument("--seeds", dest="num_seeds", type=checks.positive_int, help=argparse.SUPPRESS)


def add_site_option(
    p: Any, default: str | list[str] | None = "final", what: str = "site(s) to read"
) -> None:
    """--site, repeatable and comma lists (``--sites`` is the same option); the help is ``what``
    followed by the shared list of site names."""
    if isinstance(default, str):
        default = [default]
    p.add_argument(
        "--site",
        "--sites",
        dest="sites",
        action=ListAction,
        default=default,
        metavar="SITE",
        help=f"{what}: {SITE_NAMES}",
    )


def one_site(args: argparse.Namespace, command: str) -> str:
    """The single site of a command that reads one."""
    sites = site_list(args.sites)
    if len(sites) != 1:
        raise RepdispError(f"{command} reads one site; got {len(sites)}: {', '.join(sites)}")
    return sites[0]


def add_cache_options(g: Any) -> None:
    g.add_argument("--no-cache", action="store_true", help="do not read or write extraction shards")


def add_output_options(
    p: argparse.ArgumentParser,
    command: str,
    files: str | None = None,
    cache: bool = True,
    required: bool = False,
    help: str | None = None,
    quiet: bool = True,
) -> argparse._ArgumentGroup:
    """--out DIR, --overwrite, --quiet (and --no-cache)."""
    g = p.add_argument_group("output options")
    if required:
        g.add_argument("--out", required=True, metavar="DIR", help=help)
        return _output_tail(g, command, cache, quiet)
    what = f"result folder for {files}" if files else "result folder"
    g.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help=help or f"{what} (default: a new folder {OUT_ROOT}/{command}-N)",
    )
    if help is None:  # the guarded default grammar
        g.add_argument(
            "--overwrite",
            action="store_true",
            help="replace the results of an earlier run in --out (refused otherwise)",
        )
    return _output_tail(g, command, cache, quiet)


def _output_tail(g: Any, command: str, cache: bool, quiet: bool) -> Any:
    g.set_defaults(_command=command)
    if cache:
        add_cache_options(g)
    if quiet:
        g.add_argument("--quiet", action="store_true", help="no progress bars")
    return g


def check_out_folder(out: str | None) -> None:
    """--out is a folder: refuse an existing file or a file-like name (an older habit)."""
    if not out:
        return
    path = Path(out)
    if path.is_file() or path.suffix.lower() in (".json", ".csv", ".png", ".html", ".parquet"):
        raise RepdispError(
            f"--out {out}: --out takes a folder (results are written inside it), not a file; "
            f"e.g. --out {path.with_suffix('')}"
        )


def check_out(args: argparse.Namespace, *names: str) -> None:
    """Refuse, before any work, to replace an earlier run's result files in an explicit --out."""
    check_out_folder(args.out)
    if args.out:  # two runs writing one --out at once: the second is refused (core.shards)
        from ..core.shards import claim_folder

        claim_folder(Path(args.out))
    if not args.out or getattr(args, "overwrite", False):
        return
    taken = [n for n in names if (Path(args.out) / n).exists()]
    if taken:
        raise RepdispError(
            f"{Path(args.out) / taken[0]} exists (an earlier run's result); pass --overwrite to "
            "replace it, or another --out"
        )


def out_dir(args: argparse.Namespace) -> Path:
    """The result folder: --out, or (once per run) a new ``repdisp-out/COMMAND-N``."""
    if not args.out:
        root = Path(os.environ.get("REPDISP_OUT") or OUT_ROOT)
        root.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            candidate = root / f"{args._command}-{n}"
            try:
                candidate.mkdir()
            except FileExistsError:
                n += 1
                continue
            args.out = str(candidate)
            break
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def add_tracking_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--report-to (the Trainer's trackers) and --dispersion-every (the DispersionCallback)."""
    g = p.add_argument_group("tracking options")
    g.add_argument(
        "--report-to",
        default="none",
        type=checks.nonempty("none, or a comma list of trackers"),
        help="the Trainer's trackers, comma list: none, tensorboard (OUT/logs), wandb, mlflow, ...",
    )
    g.add_argument(
        "--dispersion-every",
        type=checks.nonneg_int,
        default=0,
        metavar="N",
        help="log the final site's dispersion on fixed held-out text every N steps (0 = off)",
    )
    return g


def report_to(args: argparse.Namespace) -> list[str] | str:
    """--report-to as the Trainer wants it: a list of names, or ``"none"``."""
    return [x.strip() for x in args.report_to.split(",") if x.strip()] or "none"
