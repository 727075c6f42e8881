"""repdisp accuracy-probe / hard-slices: label-free accuracy proxies on multiple-choice QA."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..applications.accuracy_probe import accuracy_probe
from ..applications.hard_slices import hard_slices
from ..applications.mcqa import FORMATS, TASKS, MCResult, evaluate_task
from ..core.errors import RepdispError
from ..io.results import write_result
from . import add_model_args, model_from_args


def _add_mc_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--task", default="arc-challenge", choices=TASKS, help="data format")
    p.add_argument("--data", help="ARC jsonl file/folder, MMLU csv file/folder, jsonl or hf:NAME")
    p.add_argument("--format", choices=FORMATS, help="prompt format (default: qa; mmlu for mmlu)")
    p.add_argument("--shots", type=int, default=0, help="solved examples before each question")
    p.add_argument("--shots-data", help="where the solved examples come from (e.g. MMLU dev)")
    p.add_argument("--limit", type=int, help="score a seeded random subset of this many questions")
    p.add_argument("--question-field", default="question", help="generic jsonl: question column")
    p.add_argument("--choices-field", default="choices", help="generic jsonl: choices column")
    p.add_argument("--answer-field", default="answer", help="generic jsonl: answer column")
    p.add_argument("--site", default="final", help="site of the query embedding (final)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of --limit (0)")
    p.add_argument(
        "--scores", help="reuse a queries.npz written by an earlier run instead of the model"
    )
    p.add_argument(
        "--correct-by",
        default="acc",
        choices=("acc", "acc_norm"),
        help="which prediction counts as the model's answer (acc)",
    )
    p.add_argument("--out", default="repdisp-out", help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _scored(args: argparse.Namespace) -> tuple[MCResult, str]:
    if args.scores:
        result = MCResult.load(args.scores)
        return result, result.model
    if not args.data:
        raise RepdispError("give --data (questions) or --scores (an earlier queries.npz)")
    lm = model_from_args(args)
    columns = {}
    if args.task == "jsonl":
        columns = {
            "question_field": args.question_field,
            "choices_field": args.choices_field,
            "answer_field": args.answer_field,
        }
    result = evaluate_task(
        lm,
        args.task,
        args.data,
        fmt=args.format,
        shots=args.shots,
        shots_data=args.shots_data,
        limit=args.limit,
        seed=args.seed,
        site=args.site,
        batch_size=args.batch_size,
        progress=not args.quiet,
        **columns,
    )
    path = result.save(Path(args.out) / "queries.npz")
    if result.has_labels:
        print(
            f"{len(result.items)} questions: acc {result.acc:.4f}, acc_norm {result.acc_norm:.4f}"
        )
    else:
        print(f"{len(result.items)} questions scored (no gold answers: no accuracy)")
    print(f"wrote {path} (reuse it with --scores)")
    return result, args.model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "accuracy-probe", help="dispersion of query embeddings vs fraction answered correctly"
    )
    _add_mc_args(p)
    p.add_argument("--levels", default="0,10,20,30,40,50,60,70,80,90,100", help="percent correct")
    p.add_argument("--sample", type=int, default=100, help="queries per level and seed (100)")
    p.add_argument("--seeds", type=int, default=10, help="seeds per level (10)")
    p.add_argument(
        "--on-short",
        default="reduce",
        choices=("reduce", "skip"),
        help="pool too small for --sample: reduce the size for all levels, or skip levels",
    )
    p.set_defaults(func=run_probe)

    h = sub.add_parser(
        "hard-slices", help="rank queries by mean cosine distance; likely-wrong tail"
    )
    _add_mc_args(h)
    h.add_argument("--fraction", type=float, default=0.2, help="size of the slice (0.2)")
    h.set_defaults(func=run_hard_slices)


def _levels(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(x) / 100 for x in text.split(",") if x.strip())
    except ValueError:
        raise RepdispError(f"--levels must be comma-separated percents, got {text!r}") from None
    if not levels or any(not 0 <= lv <= 1 for lv in levels):
        raise RepdispError(f"--levels must be percents in 0..100, got {text!r}")
    return levels


def run_probe(args: argparse.Namespace) -> int:
    levels = _levels(args.levels)
    if args.sample < 2 or args.seeds < 1:
        raise RepdispError("--sample must be at least 2 and --seeds at least 1")
    result, model = _scored(args)
    probe = accuracy_probe(
        result,
        model=model,
        task=args.task,
        levels=levels,
        sample=args.sample,
        seeds=args.seeds,
        correct_by=args.correct_by,
        short=args.on_short,
    )
    print(probe.table())
    paths = write_result(args.out, "probe", probe)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def run_hard_slices(args: argparse.Namespace) -> int:
    result, model = _scored(args)
    hs = hard_slices(result, args.fraction, args.correct_by)
    hs.model = model
    print(hs.table())
    paths = write_result(args.out, "hard_slices", hs)
    jsonl = Path(args.out) / "hard_slices.jsonl"  # the slice with full question text, one per line
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in hs.slice))
    print("wrote " + ", ".join(str(p) for p in [*paths, jsonl]))
    return 0
