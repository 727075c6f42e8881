"""Fig. 6 in the grid: fine-tuning on a domain raises dispersion there, full more than LoRA.

Step ``finetune_shift`` (once per grid, when ``cfg["finetune"]``, read over ``DEFAULTS``; per
model of the block's ``models``, else of the grid's): the domain text ``data`` is cut at
``train_fraction`` of its characters at a document boundary (``training.finetune.split_text``,
the cut the fine-tuning recipe itself makes):
the documents before the cut train, the ones after are held out, so training and held-out text
share no document (the result counts held-out documents whose exact text also occurs in the
training part: ``overlap_docs``). Per seed s of ``seeds`` the model is fine-tuned twice on the
training part with ``training.finetune.finetune`` (``recipe`` keys shared, then the ``lora`` /
``full`` keys), into ``out/finetune/LABEL/METHOD-sSEED`` (a loadable checkpoint). Then base,
LoRA_s and full_s are measured on the same ``N = min(segments, windows)`` held-out segments of
``seq_len`` tokens (the grid's seed, first token skipped): final site, last-token vectors - the
site and pooling of the Fig. 3 row - and the token-level perplexity exp(mean NLL).

Statistic. D(X) = mean over pairs i<j of 1 - cos(x_i, x_j) (Eq. 1) of a model's N vectors. The
three contrasts are Δ = mean_s [D(A_s) - D(B_s)] for (A, B) = (LoRA, base), (full, base),
(full, LoRA). CI: BCa (``core.bootstrap.bca_interval``) from R = ``reps`` bootstrap resamples of
the held-out segments (``core.bootstrap.bootstrap_weights`` rows, the same row for every model:
paired by segment; each model's replicate is the multiset kernel ``weighted_dispersion``), with
the exact delete-one jackknife acceleration (Δ with segment i left out, from
D_(i) = 1 - (||S - u_i||² - (N-1)) / ((N-1)(N-2)) per model). With several seeds every seed's
models share the resample, so the CI is of the seed-mean of a paired difference.

Resume: each fine-tune checkpoints every ``recipe.save_every`` steps (``training.checkpoints``;
a killed one resumes from its last checkpoint) and leaves a marker ``.ft_METHOD_sSEED.json``
with its recipe, so a rerun reuses a finished fine-tune; the evaluation's extractions go through
the shard cache; the step's marker ``.finetune_shift.done.json`` (its parameters) skips it.
The vectors are written beside the result (``finetune_shift_vectors.npz``: segment token ids and
the three models' last-token vectors), so the numbers can be recomputed without a model.

Claims (once per grid, ids ``fig6-lora``, ``fig6-full``, ``fig6-full-vs-lora``): one row per
contrast and model, paper direction +1 (Δ > 0), verdict by ``verdict.verdict``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError
from .claims import claim, fmt, read
from .config import block_over, label, stem
from .memo import n_available, pass_floor, sampling
from .steps import Run, step, write_result
from .verdict import verdict

NAME = "finetune_shift"
METHODS = ("lora", "full")
CONTRASTS = (  # (claim id, A, B, the paper's statement)
    ("fig6-lora", "lora", "base", "LoRA fine-tuning on a domain raises dispersion on it"),
    ("fig6-full", "full", "base", "full fine-tuning on a domain raises dispersion on it"),
    ("fig6-full-vs-lora", "full", "lora", "full fine-tuning raises it more than LoRA"),
)


def folder(out: Path) -> Path:
    return out / "finetune"


DEFAULTS: dict[str, Any] = {  # a config's ``finetune:`` block is read over these
    "models": None,  # None / []: the grid's models
    "data": "python-code",
    "train_fraction": 0.8,
    "seeds": [0],
    "segments": 100,  # held-out segments of the grid's seq_len
    "reps": 2000,
    "recipe": {},  # FinetuneConfig keys shared by both methods
    "lora": {},
    "full": {},
}


def settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``finetune`` block over ``DEFAULTS``; an unknown key is a ``RepdispError``."""
    return block_over(cfg, "finetune", DEFAULTS)


def block_models(cfg: dict[str, Any]) -> list[str]:
    return list(settings(cfg)["models"] or cfg["models"])


def recipe(block: dict[str, Any], method: str, seed: int) -> Any:
    """The ``FinetuneConfig`` of one fine-tune: the block's shared ``recipe``, then its
    ``METHOD`` keys, with this seed and the block's ``train_fraction``."""
    from ..training.finetune_config import FinetuneConfig

    keys = dict(block.get("recipe") or {}) | dict(block.get(method) or {})
    keys |= {"method": method, "seed": int(seed), "train_fraction": float(block["train_fraction"])}
    try:
        return FinetuneConfig(**keys)
    except TypeError as e:
        raise RepdispError(f"finetune.{method}: {e}") from None


def params(cfg: dict[str, Any], spec: str) -> dict[str, Any]:
    """What identifies one model's result: the block and the evaluation's settings."""
    block = {k: v for k, v in settings(cfg).items() if k != "models"}
    keep = {k: cfg[k] for k in ("seq_len", "seed", "dtype")}
    return {"model": spec, **block, **keep}


def heldout_split(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) documents: the recipe's own cut (``split_text``)."""
    from ..training.finetune import split_text

    train, held = split_text(docs, fraction)
    if not train or not held:
        raise RepdispError(
            f"finetune.train_fraction={fraction} leaves no training or no held-out text"
        )
    return train, held


def _marker_ok(path: Path, want: dict[str, Any]) -> bool:
    try:
        return json.loads(path.read_text()) == json.loads(json.dumps(want))
    except (OSError, ValueError):
        return False


def fine_tuned(run: Run, spec: str, method: str, seed: int) -> tuple[Path, dict[str, Any]]:
    """One fine-tune's checkpoint (reused when its marker matches; a killed one resumes from
    its last checkpoint) and its record (recipe, loss at the first and last step, seconds)."""
    from ..training.finetune import finetune

    block, top = settings(run.cfg), folder(run.out) / label(spec)
    c = recipe(block, method, seed)
    out = top / f"{method}-s{seed}"
    want = {"model": spec, "data": block["data"], **c.recipe(), "train_fraction": c.train_fraction}
    marker = top / f".ft_{method}_s{seed}.json"
    if not (_marker_ok(marker, want) and (out / "finetune.json").exists()):
        if out.exists():  # a checkpoint of other settings (or of a run cut before its marker)
            shutil.rmtree(out)
        top.mkdir(parents=True, exist_ok=True)
        run.say(f"[finetune] {label(spec)} {method} seed {seed}: {c.steps} steps")
        import torch

        torch.manual_seed(seed)  # LoRA's A matrices are drawn before the Trainer seeds itself
        done = finetune(
            spec, block["data"], out, config=c, device=run.cfg["device"], progress=False
        )
        run.steps.floor += done.floor_seconds  # plain optimiser steps of this recipe
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(json.dumps(want, sort_keys=True))
        os.replace(tmp, marker)
    res = json.loads((out / "finetune.json").read_text())
    loss = res.get("loss") or [{}]
    info = {
        "method": method,
        "seed": seed,
        "steps": res["steps"],
        "learning_rate": res["learning_rate"],
        "batch_size": res["batch_size"],
        "train_seq_len": res["seq_len"],
        "lora_r": res["lora_r"],
        "lora_alpha": res["lora_alpha"],
        "train_segments": res["train_segments"],
        "trainable_params": res["trainable_params"],
        "loss_first": loss[0].get("loss"),
        "loss_last": loss[-1].get("loss"),
    }
    info["seconds"] = (res.get("run") or {}).get("seconds", res.get("seconds"))
    return out, info


def units_of(x: Any) -> Any:
    from ..core.geometry import as_matrix, unit_rows

    return unit_rows(as_matrix(x))


def _d_and_jack(u: Any) -> tuple[float, Any]:
    """D of unit rows ``u`` and its exact delete-one jackknife values (``core.bootstrap``)."""
    import numpy as np

    n = len(u)
    s = u.sum(axis=0)
    est = 1.0 - (float(s @ s) - n) / (n * (n - 1))
    loo = s[None, :] - u
    jack = 1.0 - (np.einsum("ij,ij->i", loo, loo) - (n - 1)) / ((n - 1) * (n - 2))
    return est, jack


def paired_difference(pairs: list[tuple[Any, Any]], reps: int, seed: int) -> dict[str, Any]:
    """Δ = mean over pairs (A, B) of D(A) - D(B) (unit rows of the same N segments) with its
    BCa interval from paired bootstrap resamples of the segments (module docstring)."""
    import numpy as np

    from ..core.bootstrap import bca_interval, bootstrap_weights, interval_method
    from ..core.geometry import weighted_dispersion

    n = len(pairs[0][0])
    if n < 3:
        raise RepdispError(f"finetune: {n} held-out segments; the paired CI needs at least 3")
    est, jack = 0.0, np.zeros(n)
    for a, b in pairs:
        (da, ja), (db, jb) = _d_and_jack(a), _d_and_jack(b)
        est, jack = est + (da - db) / len(pairs), jack + (ja - jb) / len(pairs)
    values = []
    for w in bootstrap_weights(n, reps, seed):
        values.append(
            sum(weighted_dispersion(a, w) - weighted_dispersion(b, w) for a, b in pairs)
            / len(pairs)
        )
    lo, hi = bca_interval(est, np.concatenate(values), jack)
    method = interval_method(reps, "held-out segments (paired)", 0)
    return {"value": est, "ci_low": lo, "ci_high": hi, "method": method, "n": n, "reps": reps}


@step(over="grid", when="finetune")
def finetune_shift(run: Run) -> None:
    for spec in block_models(run.cfg):
        one_model(run, spec)


def one_model(run: Run, spec: str) -> None:
    import numpy as np

    cfg, block = run.cfg, settings(run.cfg)
    top, p = folder(run.out) / label(spec), params(cfg, spec)
    if run.steps.done(top, NAME, p, needs=(f"{NAME}.json", f"{NAME}_vectors.npz")):
        run.say(f"[finetune] {label(spec)}: done, skipped")
        return
    t0 = time.perf_counter()
    seeds = [int(s) for s in block["seeds"]]
    if not seeds:
        raise RepdispError("finetune.seeds: give at least one seed")
    train, held = heldout_split(run.docs(block["data"]), float(block["train_fraction"]))
    tuned = {(m, s): fine_tuned(run, spec, m, s) for s in seeds for m in METHODS}
    base = run.model(spec)
    n = min(int(block["segments"]), n_available(base, held, cfg["seq_len"]))
    smp = sampling(run, n, cfg["seq_len"])
    segs = smp.sample(base, f"{block['data']} (held-out part)", held)
    vectors: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []

    def measure(name: str, lm: Any, seed: int | None) -> None:
        ex = smp.extract(lm, segs, "final", "last")
        run.steps.floor += pass_floor(lm, segs.ids, cfg["batch_size"], ex)
        vectors[name] = np.asarray(ex.get(ex.sites[0], "last"), dtype=np.float32)
        d, _ = _d_and_jack(units_of(vectors[name]))
        ppl = float(np.exp(np.mean(ex.mean_nll)))
        rows.append({"model": name, "seed": seed, "dispersion": d, "token_ppl": ppl})

    measure("base", base, None)
    for (m, s), (path, _) in tuned.items():
        lm = run.load(str(path))
        measure(f"{m}-s{s}", lm, s)
        del lm
    units = {k: units_of(v) for k, v in vectors.items()}
    contrasts = []
    for cid, a, b, _ in CONTRASTS:
        pairs = [(units[f"{a}-s{s}"], units["base" if b == "base" else f"{b}-s{s}"]) for s in seeds]
        e = paired_difference(pairs, int(block["reps"]), int(cfg["seed"]))
        contrasts.append({"id": cid, "a": a, "b": b} | e)
    from .finetune_result import FinetuneShift  # numpy-free parser: the class loads with a run

    result = FinetuneShift(
        model=spec,
        data=block["data"],
        n_segments=len(segs),
        seq_len=cfg["seq_len"],
        seeds=seeds,
        train_docs=len(train),
        heldout_docs=len(held),
        overlap_docs=len(set(held) & set(train)),
        models=rows,
        contrasts=contrasts,
        finetunes=[{k: v for k, v in i.items() if k != "seconds"} for _, i in tuned.values()],
        seconds=time.perf_counter() - t0,
        finetune_seconds=[i["seconds"] for _, i in tuned.values()],
    )
    top.mkdir(parents=True, exist_ok=True)
    np.savez(top / f"{NAME}_vectors.npz", ids=np.asarray(segs.ids), **vectors)
    write_result(top, NAME, result, base, segs, cfg["seed"], figure=False)
    run.steps.finish(top, NAME, p)
    del base
    run.release(spec)  # a grid step: nothing after it needs the base model
    run.say(
        f"[finetune] {label(spec)}: {len(tuned)} fine-tunes + evaluation {result.seconds:.0f} s"
    )


def _command(cfg: dict[str, Any], cid: str) -> str:
    scale = "gpu" if str(cfg.get("device")).startswith("cuda") else "cpu"
    return f"repdisp reproduce --config configs/reproduce_{scale}.yaml --only {cid} --out DIR"


def rows_of(cfg: dict[str, Any], doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per contrast of one model's result."""
    tunes = {(t["method"], t["seed"]): t for t in doc.get("finetunes") or []}
    seeds = doc["seeds"]
    mean = {}
    for m in ("base", *METHODS):
        got = [r for r in doc["models"] if r["model"] == m or r["model"].startswith(f"{m}-s")]
        mean[m] = (
            sum(r["dispersion"] for r in got) / len(got),
            sum(r["token_ppl"] for r in got) / len(got),
        )
    steps = sorted({t["steps"] for t in tunes.values()})
    lrs = {
        m: sorted({t["learning_rate"] for (mm, _), t in tunes.items() if mm == m}) for m in METHODS
    }
    recipe_txt = ", ".join(
        f"{m} lr {'/'.join(f'{x:g}' for x in lrs[m])}" for m in METHODS if lrs[m]
    )
    seeds_txt = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"
    rows = []
    for c in doc["contrasts"]:
        desc = next(d for cid, _, _, d in CONTRASTS if cid == c["id"])
        lo, hi = c["ci_low"], c["ci_high"]
        rows.append(
            {
                "id": c["id"],
                "figure": "Fig. 6",
                "claim": f"§2.2(3) Fig. 6 {desc}",
                "scope": f"{label(doc['model'])} · {stem(doc['data'])} held-out part, "
                f"N={doc['n_segments']} segments x {doc['seq_len']} tokens ({doc['heldout_docs']} "
                f"held-out docs, disjoint from the {doc['train_docs']} training docs; "
                f"{doc['overlap_docs']} identical) · {'/'.join(map(str, steps))} steps "
                f"({recipe_txt}) · {seeds_txt}",
                "paper": f"D({c['a']}) − D({c['b']}) > 0",
                "result": f"ΔD {fmt(c)}; D base {mean['base'][0]:.4f}, LoRA {mean['lora'][0]:.4f}"
                f", full {mean['full'][0]:.4f}; token ppl {mean['base'][1]:.2f} → LoRA "
                f"{mean['lora'][1]:.2f}, full {mean['full'][1]:.2f} (final site, last token)",
                "verdict": verdict(lo, hi, +1),
                "command": _command(cfg, c["id"]),
                "n_seeds": len(seeds),
                "estimate": {k: c[k] for k in ("value", "ci_low", "ci_high", "method", "n")},
            }
        )
    return rows


@claim(
    over="grid",
    when="finetune",
    ids=tuple(c[0] for c in CONTRASTS),
    steps=("finetune_shift",),
)
def fig6_rows(cfg: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Fig. 6: the rows of every finished model (none while none is)."""
    rows = []
    for spec in block_models(cfg):
        doc = read(folder(out) / label(spec) / f"{NAME}.json")
        if doc:
            rows += rows_of(cfg, doc)
    return rows
