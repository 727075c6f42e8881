"""Multiple-choice tasks: loaders that give ``MCItem`` (question, choice texts, gold index, subject).

ARC jsonl    {"question": {"stem", "choices": [{"label", "text"}]}, "answerKey"}
MMLU csv     header-less rows ``question, A, B, C, D, answer`` (file or folder of *.csv;
             the subject is the file name without ``_val``/``_dev``/``_test``)
generic      jsonl/csv file or ``hf:NAME[:CONFIG]`` with column options (question, choices as a
             list of strings or of {"text"} dicts, answer as index or label letter)
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.errors import RepdispError

TASKS = ("arc-challenge", "mmlu", "jsonl")
LETTERS = "ABCDEFGHIJ"


@dataclass
class MCItem:
    """One multiple-choice question; ``answer`` is the gold index (-1 when unknown)."""

    id: str
    question: str
    choices: list[str]
    answer: int
    subject: str = ""


def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise RepdispError(f"{path}: invalid JSON line ({e.msg})") from None


def _files(path: Path, suffix: str) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob(f"*{suffix}"))
    elif path.is_file():
        files = [path]
    else:
        raise RepdispError(f"data {path} not found")
    if not files:
        raise RepdispError(f"no *{suffix} files in {path}")
    return files


def _answer_index(answer: Any, labels: list[str], where: str) -> int:
    key = str(answer).strip()
    if key in labels:
        return labels.index(key)
    if key.isdigit() and int(key) < len(labels):  # a 0-based index
        return int(key)
    raise RepdispError(f"{where}: answer {answer!r} is not one of the labels {labels}")


def load_arc(path: str | Path) -> list[MCItem]:
    """ARC jsonl file(s) (a folder loads every *.jsonl in it, e.g. Dev + Test)."""
    items = []
    for f in _files(Path(path), ".jsonl"):
        for i, rec in enumerate(_jsonl(f)):
            try:
                q = rec["question"]
                labels = [c["label"] for c in q["choices"]]
                texts = [c["text"] for c in q["choices"]]
                where = f"{f.name} line {i + 1}"
                ans = _answer_index(rec["answerKey"], labels, where) if "answerKey" in rec else -1
                items.append(MCItem(str(rec.get("id", f"{f.stem}-{i}")), q["stem"], texts, ans))
            except (KeyError, TypeError) as e:
                raise RepdispError(f"{f} line {i + 1}: not ARC format (missing {e})") from None
    return items


def _subject(path: Path) -> str:
    return re.sub(r"_(val|dev|test)$", "", path.stem)


def load_mmlu(path: str | Path) -> list[MCItem]:
    """MMLU csv file(s) without header: question, A, B, C, D, answer letter."""
    items = []
    for f in _files(Path(path), ".csv"):
        with open(f, newline="", encoding="utf-8") as fh:
            for i, row in enumerate(csv.reader(fh)):
                if len(row) != 6:
                    raise RepdispError(f"{f} row {i + 1}: expected 6 columns, got {len(row)}")
                ans = _answer_index(row[5], list("ABCD"), f"{f.name} row {i + 1}")
                items.append(MCItem(f"{f.stem}-{i}", row[0], row[1:5], ans, _subject(f)))
    return items


def load_generic(
    source: str,
    question_field: str = "question",
    choices_field: str = "choices",
    answer_field: str = "answer",
    subject_field: str | None = None,
    split: str = "test",
) -> list[MCItem]:
    """A jsonl file or ``hf:NAME[:CONFIG]`` dataset with the given columns."""
    if source.startswith("hf:"):
        try:
            import datasets
        except ImportError:
            raise RepdispError("hf: sources need the `datasets` package") from None
        name, _, config = source[3:].partition(":")
        try:
            records = list(datasets.load_dataset(name, config or None, split=split))
        except Exception as e:
            raise RepdispError(f"cannot load dataset {name!r} ({type(e).__name__})") from e
    else:
        records = [r for f in _files(Path(source), ".jsonl") for r in _jsonl(f)]
    items = []
    for i, rec in enumerate(records):
        missing = [k for k in (question_field, choices_field) if k not in rec]
        if missing:
            raise RepdispError(f"{source} record {i + 1}: no field {missing[0]!r} ({sorted(rec)})")
        raw = rec[choices_field]
        if isinstance(raw, dict) and "text" in raw:  # datasets' {"text": [...], "label": [...]}
            texts, labels = list(raw["text"]), list(raw.get("label", LETTERS[: len(raw["text"])]))
        else:
            texts = [c["text"] if isinstance(c, dict) else str(c) for c in raw]
            labels = [
                c.get("label", LETTERS[j]) if isinstance(c, dict) else LETTERS[j]
                for j, c in enumerate(raw)
            ]
        ans = rec.get(answer_field)
        gold = -1 if ans is None else _answer_index(ans, labels, f"{source} record {i + 1}")
        subject = str(rec.get(subject_field, "")) if subject_field else ""
        items.append(MCItem(str(rec.get("id", i)), str(rec[question_field]), texts, gold, subject))
    return items


def load_task(task: str, data: str, **columns: Any) -> list[MCItem]:
    """Items of ``task`` (arc-challenge | mmlu | jsonl) from ``data``."""
    if task == "arc-challenge":
        items = load_arc(data)
    elif task == "mmlu":
        items = load_mmlu(data)
    elif task == "jsonl":
        items = load_generic(data, **columns)
    else:
        raise RepdispError(f"unknown task {task!r}; choose {', '.join(TASKS)}")
    if not items:
        raise RepdispError(f"{data} holds no questions")
    return items


def default_format(task: str) -> str:
    return "mmlu" if task == "mmlu" else "qa"
