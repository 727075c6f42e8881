"""repdisp accuracy-probe / hard-slices: label-free accuracy proxies on multiple-choice QA."""

from __future__ import annotations

import argparse
import json

from ..core.errors import RepdispError
from . import checks
from .options import (
    add_batch_option,
    add_model_options,
    add_output_options,
    add_seed_option,
    add_seeds_options,
    add_site_option,
    check_out,
    model_from_args,
    one_site,
    out_dir,
)

# applications.mcqa.TASKS / FORMATS (not imported here: it pulls torch); tests check they agree
TASKS = ("arc-challenge", "mmlu", "jsonl")
FORMATS = ("qa", "mmlu")


def _add_mc_args(p: argparse.ArgumentParser, command: str, files: str) -> None:
    add_model_options(p)
    d = p.add_argument_group("data options")
    d.add_argument("--task", default="arc-challenge", choices=TASKS, help="question file format")
    d.add_argument(
        "--data",
        metavar="SOURCE",
        help="questions: ARC .jsonl file/folder, MMLU .csv file/folder, generic .jsonl or hf:NAME",
    )
    d.add_argument("--format", choices=FORMATS, help="prompt format (default: qa; mmlu for mmlu)")
    d.add_argument(
        "--shots", type=checks.nonneg_int, default=0, help="solved examples before each question"
    )
    d.add_argument("--shots-data", help="where the solved examples come from (e.g. MMLU dev)")
    d.add_argument(
        "--limit",
        type=checks.positive_int,
        help="score a seeded random subset of this many questions",
    )
    d.add_argument(
        "--lm-eval-samples",
        metavar="PATH",
        help="instead of --data: lm-evaluation-harness --log_samples output (a samples_TASK_*.jsonl"
        " file or a folder); its per-document correctness, this model's query embeddings",
    )
    d.add_argument("--lm-eval-task", help="with --lm-eval-samples: the task, when PATH has several")
    d.add_argument(
        "--lm-eval-metric",
        default="acc",
        help="with --lm-eval-samples: the per-document 0/1 metric that says right or wrong",
    )
    d.add_argument("--question-field", default="question", help="generic jsonl: question column")
    d.add_argument("--choices-field", default="choices", help="generic jsonl: choices column")
    d.add_argument("--answer-field", default="answer", help="generic jsonl: answer column")
    g = p.add_argument_group("sampling options")
    add_site_option(g, what="the one site of the query embedding")
    add_batch_option(g)
    add_seed_option(g)
    g.add_argument(
        "--scores", help="reuse a queries.npz written by an earlier run instead of the model"
    )
    g.add_argument(
        "--correct-by",
        default="acc",
        choices=("acc", "acc_norm"),
        help="which prediction counts as the model's answer",
    )
    add_output_options(p, command, files, cache=False)


def _scored(args: argparse.Namespace):
    from ..applications.mcqa import MCResult
    from ..applications.mcqa.scoring import TaskSettings, run_evaluate_task

    if args.scores:
        import zipfile

        try:
            result = MCResult.load(args.scores)
        except zipfile.BadZipFile as e:
            raise RepdispError(f"{args.scores}: not a queries.npz file ({e})") from None
        return result, result.model
    if args.lm_eval_samples:
        return _from_lm_eval(args)
    if not args.data:
        raise RepdispError(
            "give --data (questions), --lm-eval-samples or --scores (an earlier queries.npz)"
        )
    lm = model_from_args(args)
    columns = {}
    if args.task == "jsonl":
        columns = {
            "question_field": args.question_field,
            "choices_field": args.choices_field,
            "answer_field": args.answer_field,
        }
    settings = TaskSettings(
        fmt=args.format,
        shots=args.shots,
        shots_data=args.shots_data,
        limit=args.limit,
        seed=args.seed,
        columns=columns,
    )
    site = one_site(args, args._command)
    progress = not args.quiet
    result = run_evaluate_task(lm, args.task, args.data, settings, site, args.batch_size, progress)
    path = result.save(out_dir(args) / "queries.npz")
    if result.has_labels:
        print(
            f"{len(result.items)} questions: acc {result.acc:.4f}, acc_norm {result.acc_norm:.4f}"
        )
    else:
        print(f"{len(result.items)} questions scored (no gold answers: no accuracy)")
    print(f"wrote {path} (reuse it with --scores)")
    return result, args.model


def _from_lm_eval(args: argparse.Namespace):
    from ..applications.lm_eval_samples import read_samples, score_samples

    if args.data:
        raise RepdispError("give --data or --lm-eval-samples, not both")
    samples = read_samples(args.lm_eval_samples, task=args.lm_eval_task, metric=args.lm_eval_metric)
    lm = model_from_args(args)
    result, agreement = score_samples(
        lm, samples, site=one_site(args, args._command), batch_size=args.batch_size,
        progress=not args.quiet,
    )  # fmt: skip
    args.task = samples.task
    path = result.save(out_dir(args) / "queries.npz")
    print(
        f"{len(result.items)} documents of lm-eval task {samples.task}: {samples.metric} "
        f"{result.acc:.4f}, acc_norm {result.acc_norm:.4f} (as the harness scored them); "
        f"repdisp's own choice agrees with the harness's on {agreement:.1%}"
    )
    print(f"wrote {path} (reuse it with --scores)")
    return result, args.model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "accuracy-probe", help="dispersion of query embeddings vs fraction answered correctly"
    )
    _add_mc_args(p, "accuracy-probe", "queries.npz, probe.json/.csv/.png")
    g = p.add_argument_group("probe options")
    g.add_argument(
        "--levels",
        default="0,10,20,30,40,50,60,70,80,90,100",
        help="accuracy levels in percent correct, comma list",
    )
    g.add_argument(
        "--sample", type=checks.int_at_least(2), default=100, help="queries per level and seed"
    )
    add_seeds_options(g, 10)
    g.add_argument(
        "--on-short",
        default="reduce",
        choices=("reduce", "skip"),
        help="pool too small for --sample: reduce the size for all levels, or skip levels",
    )
    p.set_defaults(func=run_probe)

    h = sub.add_parser(
        "hard-slices", help="rank queries by mean cosine distance; likely-wrong tail"
    )
    _add_mc_args(
        h, "hard-slices", "queries.npz, hard_slices.json/.jsonl/.csv, hard_slices_scores.csv"
    )
    h.add_argument_group("slice options").add_argument(
        "--fraction", type=checks.fraction, default=0.2, help="size of the slice"
    )
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
    from ..applications.accuracy_probe import accuracy_probe
    from ..io.results import write_result

    levels = _levels(args.levels)
    if args.sample < 2 or args.num_seeds < 1:
        raise RepdispError("--sample must be at least 2 and --num-seeds at least 1")
    check_out(args, "probe.json")
    result, model = _scored(args)
    probe = accuracy_probe(
        result,
        model=model,
        task=args.task,
        levels=levels,
        sample=args.sample,
        seeds=args.num_seeds,
        correct_by=args.correct_by,
        short=args.on_short,
    )
    print(probe.table())
    paths = write_result(out_dir(args), "probe", probe)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def run_hard_slices(args: argparse.Namespace) -> int:
    from ..applications.hard_slices import hard_slices
    from ..io.results import write_result

    check_out(args, "hard_slices.json", "hard_slices.jsonl")
    result, model = _scored(args)
    hs = hard_slices(result, args.fraction, args.correct_by)
    hs.model = model
    print(hs.table())
    out = out_dir(args)
    paths = write_result(out, "hard_slices", hs)
    jsonl = out / "hard_slices.jsonl"  # the slice with full question text, one per line
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in hs.slice))
    print("wrote " + ", ".join(str(p) for p in [*paths, jsonl]))
    return 0
