"""The computations and the result file of the Fig. 8 cloze row (``reproduce/cloze.py`` states
the protocol and the test).

Apart from the step so that building the CLI parser (which registers every claim) imports no
numpy; the reader finds ``ClozeResult`` by the file's ``type``.

Pieces, in the order the step uses them:

    make_queries    the cloze queries of a corpus (context of ``context_words`` whole words,
                    the true next word), a seeded sample of every candidate position
    score_cloze     per query: the final-site vector of the last context token (the accuracy
                    probe's query embedding: ``applications.mcqa.score``, one continuation), the
                    true word's first token (``encode_pair``'s split), the model's top-1 next
                    token (argmax of the output head on that vector), log p(word | context)
    mixture_D       D[level, seed] of the probe's mixtures (``accuracy_probe.sample_mix``) of a
                    pool, by core's multiset kernel (``weighted_dispersion``)
    trend           per seed the Spearman of (fraction, D) over the levels and the slope
                    D(100%) - D(0%); their means over seeds
    trend_ci        BCa intervals of both means from a stratified bootstrap of the pool
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..core.errors import RepdispError
from ..io.results import Result, new_figure

WORD = re.compile(r"[A-Za-z]+")  # a candidate next word: whole, letters only (no <unk>, @-@, 1990)
LEVELS = tuple(round(0.1 * i, 1) for i in range(11))


def paragraphs(docs: list[str]) -> list[list[str]]:
    """Whitespace-split words of every paragraph: a line (WikiText-2 holds one paragraph per
    line); blank lines and headings (lines starting with ``=``, as WikiText's) left out."""
    out = []
    for doc in docs:
        for par in doc.split("\n"):
            par = par.strip()
            if par and not par.startswith("="):
                out.append(par.split())
    return out


def make_queries(docs: list[str], n: int, context_words: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (context, next word) pairs: every position k >= ``context_words`` of a paragraph
    whose word k fully matches ``WORD`` is a candidate; ``n`` of them are drawn without
    replacement (``default_rng(seed)``), kept in text order. The context is the ``context_words``
    words before k joined by single spaces (it ends with a whole word, no trailing space)."""
    if context_words < 1 or n < 1:
        raise RepdispError(
            f"cloze: queries and context_words must be >= 1, got {n}, {context_words}"
        )
    pars = paragraphs(docs)
    cand = [
        (p, k)
        for p, words in enumerate(pars)
        for k in range(context_words, len(words))
        if WORD.fullmatch(words[k])
    ]
    if len(cand) < n:
        raise RepdispError(
            f"cloze: the corpus holds {len(cand)} cloze positions with {context_words} words of "
            f"context; {n} queries asked"
        )
    pick = np.sort(np.random.default_rng(seed).choice(len(cand), n, replace=False))
    out = []
    for i in pick:
        p, k = cand[i]
        out.append((" ".join(pars[p][k - context_words : k]), pars[p][k]))
    return out


def score_cloze(
    lm: Any, queries: list[tuple[str, str]], batch_size: int = 8, progress: bool = False
) -> dict[str, np.ndarray]:
    """Per query (module docstring): ``embeddings`` (float32, final site, last context token),
    ``target`` (first token of " WORD" after the context), ``top1``, ``correct`` (top1 ==
    target), ``n_word_tokens`` and ``loglik`` (log p of all of the word's tokens)."""
    import torch

    from ..applications.mcqa import MCItem, MCPrompt, encode_pair, score

    items = [MCItem(str(i), c, [w], 0) for i, (c, w) in enumerate(queries)]
    prompts = [MCPrompt(c, [" " + w], [w]) for c, w in queries]
    scored = score(lm, items, prompts, site="final", batch_size=batch_size, progress=progress)
    conts = [encode_pair(lm.tokenizer, c, " " + w, bos=lm.bos_id)[1] for c, w in queries]
    head = lm.model.get_output_embeddings()
    top1 = np.empty(len(queries), dtype=np.int64)
    step = max(1, 2**26 // (4 * head.weight.shape[0]))  # ~64 MiB of float32 logits per chunk
    with torch.inference_mode():
        for s in range(0, len(queries), step):
            h = torch.as_tensor(scored.embeddings[s : s + step]).to(lm.device)
            logits = head(h.to(head.weight.dtype)).float()  # softcapping keeps the argmax
            top1[s : s + step] = logits.argmax(dim=-1).cpu().numpy()
    target = np.array([c[0] for c in conts], dtype=np.int64)
    return {
        "embeddings": scored.embeddings.astype(np.float32),
        "target": target,
        "top1": top1,
        "correct": top1 == target,
        "n_word_tokens": np.array([len(c) for c in conts], dtype=np.int64),
        "loglik": np.array([ll[0] for ll in scored.loglik], dtype=np.float64),
        "packed_tokens": np.asarray(scored.lengths, dtype=np.int64),
    }


def mixture_D(
    units: np.ndarray, c_idx: np.ndarray, i_idx: np.ndarray, sample: int, seeds: int
) -> np.ndarray:
    """D[level, seed]: the dispersion (core's ``weighted_dispersion``: copies of one query are
    never paired) of ``sample`` queries with round(level·sample) drawn from ``c_idx`` and the
    rest from ``i_idx`` (``accuracy_probe.sample_mix``; the arrays may repeat a query, as a
    bootstrap pool does)."""
    from scipy.sparse import csr_matrix

    from ..applications.accuracy_probe import sample_mix
    from ..core.geometry import weighted_dispersion

    rows = [sample_mix(c_idx, i_idx, lv, sample, s) for lv in LEVELS for s in range(seeds)]
    r = np.repeat(np.arange(len(rows)), sample)
    w = csr_matrix((np.ones(len(r)), (r, np.concatenate(rows))), shape=(len(rows), len(units)))
    return weighted_dispersion(units, w).reshape(len(LEVELS), seeds)


def trend(D: np.ndarray) -> dict[str, Any]:
    """Per seed (columns of D[level, seed]): Spearman rho of (level, D) and the slope
    D(100%) - D(0%); ``rho`` and ``slope`` are their means over seeds."""
    from scipy.stats import rankdata

    x = rankdata(np.asarray(LEVELS)) - (len(LEVELS) + 1) / 2
    ry = rankdata(D, axis=0)
    ry = ry - ry.mean(axis=0)
    rho = (x @ ry) / np.sqrt((x @ x) * (ry * ry).sum(axis=0))
    slope = D[-1] - D[0]
    return {"rho": float(rho.mean()), "slope": float(slope.mean()),
            "rho_seeds": rho.tolist(), "slope_seeds": slope.tolist()}  # fmt: skip


def trend_ci(
    units: np.ndarray, correct: np.ndarray, sample: int, seeds: int, reps: int, seed: int
) -> dict[str, dict[str, Any]]:
    """BCa 95% intervals of mean rho and mean slope. Replicate: the correct and the incorrect
    queries each resampled with replacement (the pool's accuracy kept), then the same mixtures
    (``mixture_D``). Acceleration: a delete-a-group jackknife of the pool
    (``core.bootstrap.jackknife_groups``), each reduced pool's mixtures of min(sample, its
    correct, its incorrect) queries."""
    from ..core.bootstrap import BCA, bca_interval, jackknife_groups

    c_idx, i_idx = np.flatnonzero(correct), np.flatnonzero(~correct)
    est = trend(mixture_D(units, c_idx, i_idx, sample, seeds))
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {"rho": [], "slope": []}
    for _ in range(reps):
        cs, ic = rng.choice(c_idx, len(c_idx)), rng.choice(i_idx, len(i_idx))
        t = trend(mixture_D(units, cs, ic, sample, seeds))
        boot["rho"].append(t["rho"])
        boot["slope"].append(t["slope"])
    groups = jackknife_groups(len(correct))
    jack: dict[str, list[float]] = {"rho": [], "slope": []}
    for keep in groups:
        kc, ki = keep[correct[keep]], keep[~correct[keep]]
        t = trend(mixture_D(units, kc, ki, min(sample, len(kc), len(ki)), seeds))
        jack["rho"].append(t["rho"])
        jack["slope"].append(t["slope"])
    method = (
        f"{BCA} {reps} bootstraps over pool queries (stratified by correctness), "
        f"{len(groups)}-group jackknife acceleration"
    )
    out = {}
    for k in ("rho", "slope"):
        lo, hi = bca_interval(est[k], boot[k], jack[k])
        out[k] = {"value": est[k], "ci_low": lo, "ci_high": hi, "method": method,
                  "per_seed": est[f"{k}_seeds"]}  # fmt: skip
    return out


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson 95% interval of a proportion k/n."""
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass
class ClozeResult(Result):
    """Fig. 8 on next-word cloze: dispersion of mixtures vs their fraction correct."""

    kind: ClassVar[str] = "cloze-probe"

    model: str
    data: str
    n_queries: int
    context_words: int
    vocab: int
    n_correct: int
    acc: float
    acc_ci: list[float]
    constant_guess: dict[str, Any]  # the best constant top-1: token, its rate
    single_token_words: float  # fraction of queries whose word is one token
    sample: int
    seeds: int
    levels: list[dict[str, Any]]  # level, n_correct, n_incorrect, mean, sem
    rho: dict[str, Any]
    slope: dict[str, Any]
    remarks: list[str] = field(default_factory=list)  # pool too small, no test
    seconds: float = 0.0

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"levels": self.levels}

    def figure(self) -> Any:
        fig, ax = new_figure(figsize=(5, 3.6))
        ax.errorbar(
            [lv["level"] * 100 for lv in self.levels],
            [lv["mean"] for lv in self.levels],
            yerr=[lv["sem"] for lv in self.levels],
            marker="o",
            capsize=3,
            label=f"{self.model} (cloze acc {self.acc:.2f})",
        )
        ax.set_xlabel("fraction of correct next-word predictions (%)")
        ax.set_ylabel("dispersion of query vectors\n(mean cosine distance, ± SEM over seeds)")
        ax.set_title(f"{self.sample} queries x {self.seeds} seeds, final site")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        return fig
