"""lm-evaluation-harness ``--log_samples`` files as input to the §3.1 accuracy probe and hard slices.

The harness writes, per task, ``samples_TASK_DATE.jsonl``: one record per document with
``doc_id``, ``target`` (the gold choice index for ``multiple_choice`` tasks), ``arguments``
(``gen_args_i: {arg_0: context, arg_1: continuation}``, one per choice, the context including
the task description and any few-shot examples), ``filtered_resps`` (``[loglik, is_greedy]``
per choice) and one entry per per-document metric (``acc``, ``acc_norm``, ``exact_match``, ...;
1.0 = correct).

``read_samples`` turns each record into an ``MCItem`` (question = the context, choices = the
continuations without the leading target delimiter, answer = ``target``) and the ``MCPrompt``
repdisp's own scorer (``applications.mcqa.score``) builds for the same texts: context =
``arg_0``, continuations = ``arg_1``. ``score_samples`` runs that scorer with the user's model,
so the query embedding is the hidden state at the chosen site of the last context token, exactly
as for ``repdisp accuracy-probe --data``; the correctness is the harness's:

    pred      = argmax of the harness log-likelihoods, then set so that ``pred == gold`` exactly
                when the record's ``metric`` (default ``acc``) is 1 (for ``acc`` that is the
                harness's own argmax, ties to the first choice as numpy);
    pred_norm = the same for ``acc_norm`` when the record has it, else ``pred``.

A record whose metric is not 0 or 1 (a partial score) is refused: the protocol needs a
right/wrong split. ``agreement`` reports how often repdisp's own argmax on its log-likelihoods
picks the harness's choice (1.0 when the model, precision and BOS handling match the run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import RepdispError
from ..core.models import LoadedModel
from .mcqa import MCItem, MCPrompt, MCResult, score


@dataclass
class HarnessSamples:
    """The documents of one task's samples file(s): items, prompts and the harness's numbers."""

    task: str
    items: list[MCItem]
    prompts: list[MCPrompt]
    loglik: list[np.ndarray]  # the harness's per-choice log-likelihoods
    pred: np.ndarray  # consistent with ``metric`` (see the module docstring)
    pred_norm: np.ndarray
    metric: str

    @property
    def correct(self) -> np.ndarray:
        return self.pred == np.array([it.answer for it in self.items])


def sample_files(path: str | Path, task: str | None = None) -> tuple[str, list[Path]]:
    """(task name, its samples files) of a samples file or a folder holding them (searched
    recursively); a folder with several tasks needs ``task``."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.rglob("samples_*.jsonl"))
        if not files:
            raise RepdispError(f"no samples_*.jsonl files (lm-eval --log_samples) in {path}")
    else:
        raise RepdispError(f"lm-eval samples {path} not found")
    names = {_task_of(f): f for f in files}
    if task is not None:
        files = [f for f in files if _task_of(f) == task]
        if not files:
            raise RepdispError(f"no samples of task {task!r} in {path}; found {sorted(names)}")
    elif len(names) > 1:
        raise RepdispError(f"{path} holds samples of several tasks {sorted(names)}: name one")
    return _task_of(files[0]), files


def _task_of(f: Path) -> str:
    stem = f.stem  # samples_TASK_2024-01-01T00-00-00.000000
    if stem.startswith("samples_") and "_" in stem[8:]:
        return stem[8:].rsplit("_", 1)[0]
    return stem


def _record(rec: dict[str, Any], where: str) -> tuple[str, list[str], int, np.ndarray]:
    try:
        args = rec["arguments"]
        pairs = [args[k] for k in sorted(args, key=lambda k: int(k.rsplit("_", 1)[1]))]
        contexts = [str(p["arg_0"]) for p in pairs]
        conts = [str(p["arg_1"]) for p in pairs]
        resps = rec.get("filtered_resps", rec.get("resps"))
        ll = np.array([float(r[0] if isinstance(r[0], str | float | int) else r[0][0])
                       for r in resps])  # fmt: skip
        gold = int(str(rec["target"]).strip())
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise RepdispError(
            f"{where}: not a multiple-choice lm-eval sample record ({type(e).__name__}: {e})"
        ) from None
    if len(set(contexts)) != 1 or len(ll) != len(conts) or len(conts) < 2:
        raise RepdispError(f"{where}: not a multiple-choice record (one context, >= 2 choices)")
    if not 0 <= gold < len(conts):
        raise RepdispError(f"{where}: target {gold} is not a choice index (0..{len(conts) - 1})")
    return contexts[0], conts, gold, ll


def _consistent(argmax: int, gold: int, right: bool, n: int) -> int:
    if (argmax == gold) == right:
        return argmax
    return gold if right else next(i for i in range(n) if i != gold)


def _right(rec: dict[str, Any], metric: str, where: str) -> bool:
    if metric not in rec:
        have = [k for k, v in rec.items() if isinstance(v, int | float) and k != "doc_id"]
        raise RepdispError(f"{where}: no per-document metric {metric!r}; the record has {have}")
    v = float(rec[metric])
    if v not in (0.0, 1.0):
        raise RepdispError(f"{where}: {metric} = {v} is not 0 or 1 (right/wrong)")
    return v == 1.0


def read_samples(
    path: str | Path, *, task: str | None = None, metric: str = "acc", delimiter: str = " "
) -> HarnessSamples:
    """Read lm-eval ``--log_samples`` output of one multiple-choice task (see the module doc);
    ``delimiter``: the task's ``target_delimiter``, cut from the choice texts."""
    name, files = sample_files(path, task)
    items, prompts, logliks, pred, pred_norm = [], [], [], [], []
    seen: set[int] = set()
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            where = f"{f.name} line {n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise RepdispError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise RepdispError(f"{where}: not an lm-eval sample record")
            if rec.get("doc_id") in seen:  # the same document under a second filter
                continue
            seen.add(rec.get("doc_id"))
            ctx, conts, gold, ll = _record(rec, where)
            texts = [c[len(delimiter) :] if c.startswith(delimiter) else c for c in conts]
            doc = rec.get("doc") if isinstance(rec.get("doc"), dict) else {}
            qid = str(doc.get("id", f"{name}-{rec.get('doc_id', len(items))}"))
            items.append(MCItem(qid, ctx, texts, gold))
            prompts.append(MCPrompt(ctx, conts, texts))
            logliks.append(ll)
            best = int(np.argmax(ll))
            pred.append(_consistent(best, gold, _right(rec, metric, where), len(conts)))
            if "acc_norm" in rec:
                norm = int(np.argmax(ll / np.array([max(1, len(t)) for t in texts])))
                pred_norm.append(_consistent(norm, gold, _right(rec, "acc_norm", where), len(ll)))
            else:
                pred_norm.append(pred[-1])
    if len(items) < 2:
        raise RepdispError(f"{path}: fewer than 2 documents of task {name}")
    return HarnessSamples(name, items, prompts, logliks, np.array(pred), np.array(pred_norm), metric)


def score_samples(
    lm: LoadedModel,
    samples: HarnessSamples | str | Path,
    *,
    site: str = "final",
    batch_size: int = 16,
    progress: bool = True,
    metric: str = "acc",
    task: str | None = None,
) -> tuple[MCResult, float]:
    """Query embeddings of the harness's documents with ``lm`` (repdisp's scorer), correctness
    from the harness: ``(MCResult, agreement)``; feed the result to ``accuracy_probe`` or
    ``hard_slices``. ``agreement``: fraction of documents where repdisp's own argmax equals
    the harness's."""
    if not isinstance(samples, HarnessSamples):
        samples = read_samples(samples, task=task, metric=metric)
    own = score(lm, samples.items, samples.prompts, site=site, batch_size=batch_size,
                progress=progress)  # fmt: skip
    harness_argmax = np.array([int(np.argmax(ll)) for ll in samples.loglik])
    agreement = float((own.pred == harness_argmax).mean())
    result = MCResult(samples.items, samples.loglik, samples.pred, samples.pred_norm,
                      own.embeddings, own.site, lm.name)  # fmt: skip
    return result, agreement
