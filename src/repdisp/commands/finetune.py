"""repdisp finetune: LoRA or full fine-tuning into a checkpoint folder, with a before/after check."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import RepdispError
from ..core.models import DEFAULT_MODEL, DEVICES
from ..training.finetune import METHODS, before_after, finetune, write_before_after
from . import check_data, checks

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
}

# the range of each option given on the command line (argparse type=)
_CHECKS = {
    "steps": checks.positive_int,
    "lr": checks.positive_float,
    "batch_size": checks.positive_int,
    "grad_accum": checks.positive_int,
    "seq_len": checks.int_at_least(2),
    "seed": checks.seed,
    "lora_r": checks.positive_int,
    "lora_alpha": checks.positive_int,
    "lora_dropout": checks.float_in(0.0, 1.0, high_open=True),
    "warmup_steps": checks.nonneg_int,
    "weight_decay": checks.nonneg_float,
    "train_fraction": checks.fraction,
    "eval_segments": checks.nonneg_int,
}
_source = checks.nonempty("a file, folder, built-in or hf:NAME")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model (LoRA merged, or full) into a safetensors checkpoint folder",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"base model (default {DEFAULT_MODEL})")
    p.add_argument(
        "--data", type=_source, help="training text: built-in, file, folder or hf: (required)"
    )
    p.add_argument("--out", required=True, help="new folder for the checkpoint and results")
    p.add_argument("--config", help="YAML file of option values (e.g. configs/finetune_paper.yaml)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto|cpu|cuda")
    p.add_argument("--text-field", default="text", help="field holding the text in jsonl/csv")
    p.add_argument("--split", help="split of an hf: dataset (default test)")
    p.add_argument("--encoding-errors", default="strict", choices=("strict", "replace"))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="no training: compare --model with the checkpoint in --out on its held-out text",
    )
    for name, (_kind, default) in _OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if name == "method":
            p.add_argument(flag, choices=METHODS, default=None, help="lora (default) or full")
        else:
            p.add_argument(flag, type=_CHECKS[name], default=None, help=f"default {default}")
    p.epilog = (
        "--train-fraction F trains on the first F of the text and writes the rest to "
        "OUT/heldout.txt; --eval-segments N then measures perplexity and dispersion of base and "
        "fine-tuned model on N held-out segments (finetune_eval.*)."
    )
    p.set_defaults(func=run_finetune)


def _settings(args: argparse.Namespace) -> dict:
    """Command line over --config file over built-in defaults."""
    values = {k: d for k, (_, d) in _OPTIONS.items()}
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise RepdispError(f"--config {path} not found")
        loaded = (yaml.safe_load(path.read_text()) or {}).get("options", {})
        unknown = sorted(set(loaded) - set(_OPTIONS))
        if unknown:
            raise RepdispError(f"--config {path}: unknown option(s) {', '.join(unknown)}")
        values.update({k: _OPTIONS[k][0](v) for k, v in loaded.items()})
    values.update({k: getattr(args, k) for k in _OPTIONS if getattr(args, k) is not None})
    return values


def run_finetune(args: argparse.Namespace) -> int:
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
        o["method"],
        o["steps"],
        o["lr"],
        o["batch_size"],
        o["seq_len"],
        o["seed"],
        o["lora_r"],
        o["lora_alpha"],
        o["lora_dropout"],
        o["train_fraction"],
        o["warmup_steps"],
        o["weight_decay"],
        o["grad_accum"],
        args.device,
        args.text_field,
        args.encoding_errors,
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


def _heldout_of(out: Path) -> str:
    for name in ("heldout.txt", "heldout.jsonl"):
        if (out / name).exists():
            return str(out / name)
    raise RepdispError(f"{out} has no heldout.txt/.jsonl: fine-tune with --train-fraction < 1")


def _evaluate(args: argparse.Namespace, o: dict, heldout: str) -> int:
    if o["eval_segments"] < 2:
        raise RepdispError("--eval-segments must be at least 2")
    ev = before_after(
        args.model,
        args.out,
        heldout,
        o["eval_segments"],
        o["seq_len"],
        o["seed"],
        device=args.device,
        progress=not args.quiet,
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
