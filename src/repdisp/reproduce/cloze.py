"""Fig. 8 (§3.1) on a task the bundled models can do: next-word cloze on held-out prose.

The ``fig8`` rows (``reproduce.mc``) test the paper's claim on ARC / MMLU, where 135M-270M
models answer at chance, so their mixtures of "correct" and "incorrect" queries differ only by
luck. This row asks the same question where correctness means something.

Queries (``cloze_result.make_queries``). The corpus ``data`` (the grid's first corpus when
not given; the shipped configs name the WikiText-2 test split) is cut into paragraphs (lines: WikiText-2 holds one paragraph per line; ``=`` heading lines
dropped) and words
(whitespace-split). Every position k >= ``context_words`` whose word w_k is a whole alphabetic
word (``[A-Za-z]+``, so no ``<unk>``, ``@-@``, numbers or punctuation) is a candidate; ``queries``
of them are drawn without replacement (seed ``cfg["seed"]``). Context = the ``context_words``
words before w_k joined by single spaces; it ends with a whole word and no space.

Correctness rule. t = the first token of the continuation " w_k" after the context, as the
harness splits it (``mcqa.encode_pair``: tokens(context + " w_k") past the tokens(context)
prefix; a BOS first when the tokenizer adds one). The query is correct when the model's top-1
next token after the context - argmax over the vocabulary of the output head applied to the
final-site vector of the last context token - equals t: for a one-token word the model predicts
the word, for a longer word its first piece. Chance is 1/V for a uniform guess; the row also
gives the best constant guess (the rate of the most frequent t among the queries).

Query vector: the final-site hidden state at the last context token - the accuracy probe's
query embedding (``applications.mcqa.score``, site ``final``), from the same forward pass.

Mixtures (the probe's protocol, ``accuracy_probe.sample_mix``): for each fraction f in 0, 0.1,
..., 1.0 and seed s < ``seeds``, ``sample`` queries with round(f·sample) correct, the rest
incorrect, drawn without replacement; D(f, s) = mean over pairs of 1 - cos (Eq. 1, core's
``weighted_dispersion``). When the pool holds fewer than ``sample`` correct (or incorrect)
queries, every mixture uses m = min(sample, #correct, #incorrect) queries (the row says so);
below 10 there is no test.

Monotonicity test. Per seed: rho_s = Spearman(f, D(f, s)) over the 11 fractions, and the
slope Δ_s = D(1, s) - D(0, s). Statistics: rho = mean_s rho_s and Δ = mean_s Δ_s. CIs: BCa
95% over ``reps`` stratified bootstrap resamples of the pool (correct and incorrect queries
resampled separately, the mixtures redrawn from the resampled pool; copies of one query never
paired), grouped-jackknife acceleration (``cloze_result.trend_ci``). Verdict: ``verdict.verdict``
on each of rho and Δ (direction +1: dispersion rises with the fraction correct); the row is
supported when both are, contradicted when both are contradicted, else inconclusive. A model
whose accuracy's Wilson CI does not exceed the best constant guess is marked too weak to test.

Step ``cloze_step`` (per model, when ``cfg["cloze"]``; folder out/LABEL/cloze-STEM): the queries
are scored ``PART`` at a time, each part saved (a killed run resumes at its first missing part),
then gathered into ``cloze_queries.npz`` behind their own marker (a rerun with other mixture or
bootstrap settings reuses them), then ``cloze.json`` and its marker; a matching marker skips the
step. Claim ``fig8-cloze`` (figure "Fig. 8", beside the ``fig8`` rows): one row per model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError
from .claims import claim, fmt, read
from .config import block_over, label, stem
from .memo import plain_forward_lengths
from .steps import Run, step, write_result
from .verdict import verdict

NAME = "cloze"
MIN_SAMPLE = 10
PART = 100  # queries scored and saved together (a killed scoring pass resumes per part)
DEFAULTS: dict[str, Any] = {  # a config's ``cloze:`` block is read over these
    "models": None,  # None / []: the grid's models; else those of them that the grid runs
    "data": None,  # None: the grid's first corpus
    "queries": 800,
    "context_words": 48,
    "sample": 100,
    "seeds": 10,
    "reps": 1000,
}


def settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``cloze`` block over ``DEFAULTS``; an unknown key or a bad size is a
    ``RepdispError``."""
    block = block_over(cfg, "cloze", DEFAULTS)
    block["data"] = block["data"] or cfg["data"][0]
    for key in ("queries", "context_words", "sample", "seeds", "reps"):
        if not isinstance(block[key], int) or block[key] < 1:
            raise RepdispError(f"cloze.{key} must be a positive integer, got {block[key]!r}")
    if block["sample"] < 2:
        raise RepdispError("cloze.sample must be at least 2")
    return block


def block_models(cfg: dict[str, Any]) -> list[str]:
    """The block's ``models`` that the grid runs (all of the grid's when not given)."""
    return [m for m in settings(cfg)["models"] or cfg["models"] if m in cfg["models"]]


def folder(out: Path, spec: str, data: str) -> Path:
    return out / label(spec) / f"{NAME}-{stem(data)}"


def query_params(cfg: dict[str, Any], spec: str) -> dict[str, Any]:
    """What identifies the scored queries (their marker)."""
    b = settings(cfg)
    keep = {k: cfg[k] for k in ("seed", "dtype")}
    return {"model": spec, "data": b["data"], "queries": b["queries"],
            "context_words": b["context_words"], **keep}  # fmt: skip


def params(cfg: dict[str, Any], spec: str) -> dict[str, Any]:
    b = settings(cfg)
    return query_params(cfg, spec) | {k: b[k] for k in ("sample", "seeds", "reps")}


@step(over="model", when="cloze")
def cloze_step(run: Run, spec: str) -> None:
    if spec not in block_models(run.cfg):
        return
    import numpy as np

    from ..core.geometry import unit_rows
    from . import cloze_result as cr

    cfg, block = run.cfg, settings(run.cfg)
    top, p = folder(run.out, spec, block["data"]), params(cfg, spec)
    if run.steps.done(top, NAME, p, needs=(f"{NAME}.json", f"{NAME}_queries.npz")):
        run.say(f"[cloze] {label(spec)}: done, skipped")
        return
    t0 = time.perf_counter()
    qfile, qp = top / f"{NAME}_queries.npz", query_params(cfg, spec)
    lm = run.model(spec)
    if run.steps.done(top, "cloze_queries", qp, needs=(qfile.name,)):
        with np.load(qfile) as z:
            got = {k: z[k] for k in z.files}
    else:
        got = score_in_parts(run, lm, top, qp)
        tmp = top / f"{NAME}_queries.tmp.npz"
        np.savez(tmp, **got)
        tmp.replace(qfile)
        run.steps.finish(top, "cloze_queries", qp)
        for part in top.glob(f"{NAME}_part*.npz"):
            part.unlink()
    correct = np.asarray(got["correct"], dtype=bool)
    n, k = len(correct), int(correct.sum())
    m = min(block["sample"], k, n - k)
    notes = []
    if m < block["sample"]:
        notes.append(f"pool has {k} correct / {n - k} incorrect queries: mixtures of {m}")
    units = unit_rows(got["embeddings"])
    nan = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    if m >= MIN_SAMPLE:
        ci = cr.trend_ci(units, correct, m, block["seeds"], block["reps"], cfg["seed"])
        D = cr.mixture_D(units, np.flatnonzero(correct), np.flatnonzero(~correct), m,
                         block["seeds"])  # fmt: skip
        sem = D.std(axis=1, ddof=1) / np.sqrt(D.shape[1]) if D.shape[1] > 1 else D[:, 0] * np.nan
        levels = [
            {
                "level": lv,
                "n_correct": int(round(lv * m)),
                "n_incorrect": m - int(round(lv * m)),
                "mean": float(D[i].mean()),
                "sem": float(sem[i]),
            }  # fmt: skip
            for i, lv in enumerate(cr.LEVELS)
        ]
    else:
        ci, levels = {"rho": nan, "slope": nan}, []
        notes.append(f"fewer than {MIN_SAMPLE} correct or incorrect queries: no test")
    first, counts = np.unique(got["target"], return_counts=True)
    best = int(np.argmax(counts))
    result = cr.ClozeResult(
        model=spec,
        data=block["data"],
        n_queries=n,
        context_words=block["context_words"],
        vocab=int(lm.model.get_output_embeddings().weight.shape[0]),
        n_correct=k,
        acc=k / n,
        acc_ci=list(cr.wilson(k, n)),
        constant_guess={
            "token": lm.tokenizer.decode([int(first[best])]),
            "rate": float(counts[best] / n),
        },  # fmt: skip
        single_token_words=float(np.mean(got["n_word_tokens"] == 1)),
        sample=m,
        seeds=block["seeds"],
        levels=levels,
        rho=ci["rho"],
        slope=ci["slope"],
        remarks=notes,
        seconds=time.perf_counter() - t0,
    )
    write_result(top, NAME, result, lm, seed=cfg["seed"], figure=bool(levels))
    run.steps.finish(top, NAME, p)
    run.say(f"[cloze] {label(spec)}: acc {k / n:.3f}, {result.seconds:.0f} s")


def score_in_parts(run: Run, lm: Any, top: Path, qp: dict[str, Any]) -> dict[str, Any]:
    """The scored queries (``cloze_result.score_cloze``), ``PART`` queries at a time, each part
    saved with the parameters it was scored for (``cloze_partJ.npz``), so a killed scoring pass
    resumes at its first missing part; parts of other parameters are scored again."""
    import json

    import numpy as np

    from . import cloze_result as cr

    block, cfg = settings(run.cfg), run.cfg
    queries = cr.make_queries(
        run.docs(block["data"]), block["queries"], block["context_words"], cfg["seed"]
    )
    top.mkdir(parents=True, exist_ok=True)
    want, parts = json.dumps(qp, sort_keys=True), []
    for j, s in enumerate(range(0, len(queries), PART)):
        path, chunk = top / f"{NAME}_part{j}.npz", queries[s : s + PART]
        try:
            with np.load(path) as z:
                if str(z["params"]) == want:
                    parts.append({k: z[k] for k in z.files if k != "params"})
                    continue
        except (OSError, KeyError, ValueError):
            pass
        run.say(f"[cloze] {label(qp['model'])}: scoring queries {s}-{s + len(chunk) - 1}")
        got = cr.score_cloze(lm, chunk, cfg["batch_size"], run.progress)
        run.steps.floor += plain_forward_lengths(lm, got["packed_tokens"], cfg["batch_size"])
        got["context"] = np.array([c for c, _ in chunk])
        got["word"] = np.array([w for _, w in chunk])
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, params=np.array(want), **got)
        tmp.replace(path)
        parts.append(got)
    keys = [k for k in parts[0] if all(k in p for p in parts)]  # parts of older versions
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def row_verdict(rho: dict[str, Any], slope: dict[str, Any]) -> str:
    """Both of rho and the slope on the paper's side (+1): supported; both on the other side:
    contradicted; else inconclusive (``verdict.verdict`` on each)."""
    a = verdict(rho["ci_low"], rho["ci_high"], +1)
    b = verdict(slope["ci_low"], slope["ci_high"], +1)
    if a == b:
        return a
    return "inconclusive (no CI)" if "no CI" in a + b else "inconclusive at this N"


def _command(cfg: dict[str, Any]) -> str:
    scale = "gpu" if str(cfg.get("device")).startswith("cuda") else "cpu"
    return f"repdisp reproduce --config configs/reproduce_{scale}.yaml --only fig8-cloze --out DIR"


def row_of(cfg: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """The ``fig8-cloze`` row of one model's result."""
    lo, hi = doc["acc_ci"]
    guess = doc["constant_guess"]
    weak = lo <= guess["rate"]
    acc = (
        f"cloze acc {doc['acc']:.3f} [{lo:.3f}, {hi:.3f}] (Wilson; {doc['n_correct']} of "
        f"{doc['n_queries']}) vs chance 1/{doc['vocab']} and best constant guess "
        f"{guess['rate']:.3f} ({guess['token']!r}): "
        + ("not above it, too weak to test" if weak else "clearly above chance")
    )
    nan = float("nan")  # a NaN is written as null
    rho, slope = ({k: nan if v is None else v for k, v in doc[s].items()} for s in ("rho", "slope"))
    if doc["levels"]:
        means = ", ".join(f"{lv['mean']:.4f}" for lv in (doc["levels"][0], doc["levels"][-1]))
        res = (f"mean per-seed Spearman(f, D) {fmt(rho, 3)}; slope D(100%) − D(0%) "
               f"{fmt(slope, 4)} (D {means}); {acc}")  # fmt: skip
    else:
        res = f"no mixtures; {acc}"
    if doc.get("remarks"):
        res += f" ({'; '.join(doc['remarks'])})"
    v = row_verdict(rho, slope)
    return {
        "id": "fig8-cloze",
        "figure": "Fig. 8",
        "claim": "§3.1 Fig. 8 mean pairwise distance rises monotonically with the fraction of "
        "correct answers (next-word cloze, controlled mixtures)",
        "scope": f"{label(doc['model'])} · {stem(doc['data'])} next-word cloze, pool "
        f"{doc['n_queries']} queries x {doc['context_words']} words of context · mixtures of "
        f"N={doc['sample']} queries at 11 fractions (0-100%) x {doc['seeds']} seeds · final "
        "site, last context token",
        "paper": "Spearman(f, D) > 0 and D(100%) − D(0%) > 0",
        "result": res,
        "verdict": v + (" (model too weak to test)" if weak else ""),
        "command": _command(cfg),
        "n_seeds": doc["seeds"],
        "estimate": {k: rho.get(k) for k in ("value", "ci_low", "ci_high", "method")},
    }


@claim(over="grid", when="cloze", ids=("fig8-cloze",), steps=("cloze_step",))
def fig8_cloze_rows(cfg: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Fig. 8 on cloze: the row of every finished model (none while none is)."""
    block = settings(cfg)
    rows = []
    for spec in block_models(cfg):
        doc = read(folder(out, spec, block["data"]) / f"{NAME}.json")
        if doc:
            rows.append(row_of(cfg, doc))
    return rows
