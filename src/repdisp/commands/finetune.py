"""repdisp finetune: LoRA or full fine-tuning into a checkpoint folder, with a before/after check."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError
from ..core.validate import Rule, check, check_keys, read_yaml_mapping
from . import checks
from .options import (
    add_data_options,
    add_device_option,
    add_model_options,
    add_output_options,
    add_tracking_options,
    check_data,
    report_to,
)

METHODS = ("lora", "full")  # training.finetune.METHODS (not imported here: it pulls torch)

# option name -> (type, default); a --config YAML file may set any of them
_OPTIONS = {
    "method": (str, "lora"),
    "steps": (int, 50),
    "lr": (float, 2e-4),
    "batch_size": (int, 4),
    "grad_accum": (int, 1),
    "seq_len": (int, 128),
    "seed": (int, 0),
    "lora_r": (int, 8),
    "lora_alpha": (int, 16),
    "lora_dropout": (float, 0.05),
    "warmup_steps": (int, 0),
    "weight_decay": (float, 0.0),
    "train_fraction": (float, 1.0),
    "eval_segments": (int, 0),
    "save_every": (int, 0),
}
# what each option accepts (checked for the --config file and the command line alike)
_RULES = {
    "method": Rule(str, choices=METHODS),
    "steps": Rule(int, lo=1),
    "lr": Rule(float, lo=0, lo_open=True),
    "batch_size": Rule(int, lo=1),
    "grad_accum": Rule(int, lo=1),
    "seq_len": Rule(int, lo=2),
    "seed": Rule(int, lo=0, hi=2**32 - 1),
    "lora_r": Rule(int, lo=1),
    "lora_alpha": Rule(float, lo=0, lo_open=True),
    "lora_dropout": Rule(float, lo=0, hi=1, hi_open=True),
    "warmup_steps": Rule(int, lo=0),
    "weight_decay": Rule(float, lo=0),
    "train_fraction": Rule(float, lo=0, hi=1, lo_open=True),
    "eval_segments": Rule(int, lo=0),
    "save_every": Rule(int, lo=0),
}
# flags every command shares keep one type (checks.*); the rest are checked by _RULES below
_SHARED_TYPES = {
    "seed": checks.seed,
    "batch_size": checks.positive_int,
    "seq_len": checks.int_at_least(2),
}
_HELP = {
    "method": "lora (merged into the weights) or full",
    "steps": "optimizer steps",
    "lr": "learning rate",
    "batch_size": "sequences per forward pass",
    "grad_accum": "forward passes per optimizer step",
    "seq_len": "tokens per segment",
    "seed": "sampling seed",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "lora_dropout": "LoRA dropout",
    "warmup_steps": "linear warm-up steps",
    "weight_decay": "AdamW weight decay",
    "train_fraction": "train on this leading fraction of the text; the rest is held out",
    "eval_segments": "held-out segments for the before/after check (0 = none)",
    "save_every": "save a checkpoint every N optimizer steps beside --out (0 = never)",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model (LoRA merged, or full) into a safetensors checkpoint folder",
    )
    add_device_option(add_model_options(p, loading=False))
    add_data_options(p, default=None)
    o = add_output_options(
        p,
        "finetune",
        cache=False,
        required=True,
        help="new folder for the checkpoint and results",
    )
    o.add_argument(
        "--eval-only",
        action="store_true",
        help="no training: compare --model with the checkpoint in --out on its held-out text",
    )
    add_tracking_options(p)
    t = p.add_argument_group("training options (command line over --config over defaults)")
    t.add_argument("--config", help="YAML file of option values (e.g. configs/finetune_paper.yaml)")
    for name, (kind, default) in _OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        text = f"{_HELP[name]} (default: {default}, or the --config value)"
        if name == "method":
            t.add_argument(flag, choices=METHODS, default=None, help=text)
        else:
            t.add_argument(flag, type=_SHARED_TYPES.get(name, kind), default=None, help=text)
    p.epilog = (
        "--save-every N saves a checkpoint every N steps beside --out; the same command after a "
        "crash resumes from the last one. "
        "--train-fraction F trains on the first F of the text and writes the rest to "
        "OUT/heldout.txt; --eval-segments N then measures perplexity and dispersion of base and "
        "fine-tuned model on N held-out segments (finetune_eval.*)."
    )
    p.set_defaults(func=run_finetune)


def _settings(args: argparse.Namespace) -> dict:
    """Command line over --config file over built-in defaults, each value checked (one-line
    errors naming the file or flag and the key)."""
    values = {k: d for k, (_, d) in _OPTIONS.items()}
    if args.config:
        where = f"--config {args.config}"
        raw = read_yaml_mapping(args.config, "--config")
        check_keys(where, raw, ("options",))
        loaded = raw.get("options") or {}
        if not isinstance(loaded, dict):
            raise RepdispError(f"{where}: options must be a mapping of option names to values")
        check_keys(f"{where}: options", loaded, _OPTIONS)
        values.update({k: check(where, k, v, _RULES[k]) for k, v in loaded.items()})
    for k in _OPTIONS:
        if getattr(args, k, None) is not None:
            flag = "--" + k.replace("_", "-")
            values[k] = check("command line", flag, getattr(args, k), _RULES[k])
    return values


def run_finetune(args: argparse.Namespace) -> int:
    from ..training.finetune import finetune

    o = _settings(args)
    if args.eval_only:
        return _evaluate(args, o, _heldout_of(Path(args.out)))
    if not args.data:
        raise RepdispError("--data is required (the training text)")
    check_data(args)
    if o["eval_segments"] and o["train_fraction"] >= 1.0:
        raise RepdispError("--eval-segments needs held-out text: pass --train-fraction < 1")
    r = finetune(
        args.model,
        args.data,
        args.out,
        config=_config(args, o),
        device=args.device,
        progress=not args.quiet,
    )
    first, last = r.loss[0]["loss"], r.loss[-1]["loss"]
    print(
        f"{r.method} fine-tune of {r.base_model}: {r.steps} steps x {r.batch_size} x {r.seq_len} "
        f"tokens on {r.train_segments} training segments; {r.trainable_params:,} of "
        f"{r.total_params:,} parameters trained; loss {first:.3f} -> {last:.3f}; {r.seconds:.0f} s"
    )
    print(f"checkpoint: {r.checkpoint}" + (f"  held-out text: {r.heldout}" if r.heldout else ""))
    return _evaluate(args, o, r.heldout) if o["eval_segments"] else 0


def _config(args: argparse.Namespace, o: dict) -> Any:
    """The ``FinetuneConfig`` of the run: the checked options ``o`` and the tracking and data
    flags, built once."""
    from ..training.finetune_config import FinetuneConfig

    keys = (
        "method", "steps", "batch_size", "seq_len", "seed", "lora_r", "lora_alpha",
        "lora_dropout", "train_fraction", "warmup_steps", "weight_decay", "grad_accum",
        "save_every",
    )  # fmt: skip
    return FinetuneConfig(
        learning_rate=o["lr"],
        report_to=report_to(args),
        dispersion_every=args.dispersion_every,
        text_field=args.text_field,
        encoding_errors=args.encoding_errors,
        split=args.split,
        **{k: o[k] for k in keys},
    )


def _heldout_of(out: Path) -> str:
    for name in ("heldout.txt", "heldout.jsonl"):
        if (out / name).exists():
            return str(out / name)
    raise RepdispError(f"{out} has no heldout.txt/.jsonl: fine-tune with --train-fraction < 1")


def _evaluate(args: argparse.Namespace, o: dict, heldout: str) -> int:
    from ..core.sampling import Sampling
    from ..training.finetune import before_after, write_before_after

    if o["eval_segments"] < 2:
        raise RepdispError("--eval-segments must be at least 2")
    ev = before_after(
        args.model,
        args.out,
        heldout,
        sampling=Sampling(
            segments=o["eval_segments"],
            seq_len=o["seq_len"],
            seed=o["seed"],
            progress=not args.quiet,
        ),
        device=args.device,
    )
    write_before_after(ev, Path(args.out))
    print(f"held-out {heldout}: {ev.n_segments} segments x {ev.seq_len} tokens")
    for row in ev.rows:
        print(
            f"  {row['model']:<11} token ppl {row['token_ppl']:8.3f}  mean ppl {row['mean_ppl']:8.3f}"
            f"  dispersion {row['dispersion']:.5f} [{row['ci_low']:.5f}, {row['ci_high']:.5f}]"
        )
    print(
        f"  dispersion change {ev.dispersion_change:+.5f} (paired 95% CI [{ev.change_ci_low:+.5f}, "
        f"{ev.change_ci_high:+.5f}]); perplexity lower on {ev.ppl_lower_fraction:.0%} of segments"
    )
    return 0
