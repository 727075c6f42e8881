"""repdisp accuracy-probe / hard-slices: label-free accuracy proxies on multiple-choice QA."""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

from ..applications.accuracy_probe import accuracy_probe, plot_probe
from ..applications.hard_slices import hard_slices, slice_rows
from ..applications.mcqa import FORMATS, TASKS, MCResult, evaluate
from ..core.errors import RepdispError
from ..io.results import save_figure, write_csv, write_json
from . import add_model_args, checks, model_from_args


def _add_mc_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--task", default="arc-challenge", choices=TASKS, help="data format")
    p.add_argument("--data", help="ARC jsonl file/folder, MMLU csv file/folder, jsonl or hf:NAME")
    p.add_argument("--format", choices=FORMATS, help="prompt format (default: qa; mmlu for mmlu)")
    p.add_argument(
        "--shots", type=checks.nonneg_int, default=0, help="solved examples before each question"
    )
    p.add_argument("--shots-data", help="where the solved examples come from (e.g. MMLU dev)")
    p.add_argument(
        "--limit",
        type=checks.positive_int,
        help="score a seeded random subset of this many questions",
    )
    p.add_argument("--question-field", default="question", help="generic jsonl: question column")
    p.add_argument("--choices-field", default="choices", help="generic jsonl: choices column")
    p.add_argument("--answer-field", default="answer", help="generic jsonl: answer column")
    p.add_argument("--site", default="final", help="site of the query embedding (final)")
    p.add_argument("--batch-size", type=checks.positive_int, default=16)
    p.add_argument("--seed", type=checks.seed, default=0, help="seed of --limit (0)")
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
        try:
            result = MCResult.load(args.scores)
        except zipfile.BadZipFile as e:
            raise RepdispError(f"{args.scores}: not a queries.npz file ({e})") from None
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
    result = evaluate(
        lm,
        args.task,
        args.data,
        args.format,
        args.shots,
        args.shots_data,
        args.limit,
        args.seed,
        args.site,
        args.batch_size,
        not args.quiet,
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
    p.add_argument(
        "--sample",
        type=checks.int_at_least(2),
        default=100,
        help="queries per level and seed (100)",
    )
    p.add_argument("--seeds", type=checks.positive_int, default=10, help="seeds per level (10)")
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
    h.add_argument("--fraction", type=checks.fraction, default=0.2, help="size of the slice (0.2)")
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
        result, model, args.task, levels, args.sample, args.seeds, args.correct_by, args.on_short
    )
    print(probe.table())
    out = Path(args.out)
    write_json(out / "probe.json", probe)
    write_csv(out / "probe.csv", probe.rows())
    save_figure(plot_probe([probe]), out / "probe.png")
    print(f"wrote {out}/probe.json, probe.csv, probe.png")
    return 0


def run_hard_slices(args: argparse.Namespace) -> int:
    result, model = _scored(args)
    hs = hard_slices(result, args.fraction, args.correct_by)
    rows = slice_rows(result, hs, args.correct_by)
    out = Path(args.out)
    summary = {
        "model": model,
        "n_queries": len(result.items),
        "n_slice": hs.n_slice,
        "fraction": hs.fraction,
        "correct_by": args.correct_by,
        "auroc_wrong": hs.auroc,
        "error_rate_slice": hs.error_rate_slice,
        "error_rate_all": hs.error_rate_all,
    }
    print(f"{model}: {len(result.items)} queries, slice = lowest {hs.n_slice} scores")
    if hs.auroc is not None:
        print(
            f"AUROC (low score -> wrong) {hs.auroc:.4f}; error rate in slice "
            f"{hs.error_rate_slice:.4f} vs overall {hs.error_rate_all:.4f}"
        )
    write_json(out / "hard_slices.json", summary)
    write_csv(out / "hard_slice.csv", rows)
    (out / "hard_slice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_csv(
        out / "scores.csv",
        [{"id": it.id, "score": float(s)} for it, s in zip(result.items, hs.scores, strict=True)],
    )
    print(f"wrote {out}/hard_slices.json, hard_slice.jsonl/.csv, scores.csv")
    return 0
