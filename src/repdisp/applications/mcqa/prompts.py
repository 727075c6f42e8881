"""Prompt formats (as lm-evaluation-harness tasks ``arc_challenge`` and ``mmlu``):

    qa     context ``Question: {q}\\nAnswer:``, continuations `` {choice text}``
    mmlu   context ``The following are multiple choice questions (with answers) about {subject}.
           \\n\\n{q}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:``, continuations `` A`` .. `` D``

k-shot: k solved examples (prompt + gold continuation) joined by a blank line before the
question; for ``mmlu`` the first k dev items of the same subject (harness ``first_n``), else a
seeded sample of the shot pool.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ...core.errors import RepdispError
from .tasks import LETTERS, MCItem

FORMATS = ("qa", "mmlu")


@dataclass
class MCPrompt:
    """A formatted question: the context and one continuation per choice."""

    context: str
    continuations: list[str]
    choice_texts: list[str]  # what acc_norm divides by (harness: the doc_to_choice strings)


def _body(item: MCItem, fmt: str) -> tuple[str, list[str], list[str]]:
    if fmt == "qa":
        return f"Question: {item.question}\nAnswer:", [f" {c}" for c in item.choices], item.choices
    if fmt == "mmlu":
        letters = list(LETTERS[: len(item.choices)])
        lines = [item.question.strip()] + [
            f"{k}. {c}" for k, c in zip(letters, item.choices, strict=True)
        ]
        return "\n".join(lines) + "\nAnswer:", [f" {k}" for k in letters], letters
    raise RepdispError(f"unknown prompt format {fmt!r}; choose {', '.join(FORMATS)}")


def _header(item: MCItem, fmt: str) -> str:
    if fmt != "mmlu":
        return ""
    subject = f" about {item.subject.replace('_', ' ')}" if item.subject else ""
    return f"The following are multiple choice questions (with answers){subject}.\n\n"


def _shots_for(item: MCItem, pool: list[MCItem], k: int, fmt: str, seed: int) -> list[MCItem]:
    if k == 0:
        return []
    if fmt == "mmlu":  # first k dev items of the same subject, as the harness
        same = [s for s in pool if s.subject == item.subject and s.id != item.id]
        return same[:k]
    rng = np.random.default_rng([seed, zlib.crc32(item.id.encode())])
    cands = [s for s in pool if s.id != item.id]
    return [cands[j] for j in rng.choice(len(cands), min(k, len(cands)), replace=False)]


def make_prompts(
    items: list[MCItem],
    fmt: str = "qa",
    shots: int = 0,
    shot_pool: list[MCItem] | None = None,
    seed: int = 1234,
) -> list[MCPrompt]:
    """Format items as prompts, with ``shots`` solved examples from ``shot_pool`` in front."""
    if shots and not shot_pool:
        raise RepdispError("k-shot prompts need a pool of solved examples (--shots-data)")
    prompts = []
    for item in items:
        parts = []
        for s in _shots_for(item, shot_pool or [], shots, fmt, seed):
            ctx, conts, _ = _body(s, fmt)
            parts.append(ctx + conts[s.answer])
        ctx, conts, texts = _body(item, fmt)
        prompts.append(MCPrompt(_header(item, fmt) + "\n\n".join(parts + [ctx]), conts, texts))
    return prompts
