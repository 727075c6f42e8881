"""Fig. 7 in the grid: over one from-scratch training run, within- and between-cluster distances
both grow while the held-out loss falls (§2.3). Step and claims.

Step ``scratch_clusters`` (once per grid, when ``cfg["fig7"]``, read over ``DEFAULTS``): per seed
of ``seeds``, one small GPT-2 trained from random init with ``training.run.run_train`` on a
recipe (``recipe``: a ``configs/train_*.yaml`` file; ``train``: its keys overridden; max_steps =
the last of ``checkpoints``) into ``out/fig7/seed-S/``. A callback keeps the weights at every
step of ``checkpoints`` (step 0 = the initialisation) as a loadable folder ``step-T`` (model and
tokenizer). Held-out text: the test part of the recipe's first domain (its ``test`` source, or
its last ``test_fraction`` of characters; never trained on). Clusters (``analyses.ngrams``,
``analyses.clusters.sample_contexts``): the ``clusters`` most frequent ``ngram``-grams of the
held-out token stream seen ``min_count``+ times, each with up to ``per_cluster`` occurrences
(seeded by the grid's ``seed``) and their ``context`` tokens of left context; a context's vector
is the final site at its last token (the one predicting the n-gram's first token), the same
contexts for every checkpoint and seed. Per checkpoint: the clusters' within values and
centroids, and the mean next-token NLL of each held-out block of the recipe (``eval_blocks``
blocks of ``block_size`` tokens). The statistics and their intervals are §2.3's definitions,
stated in ``scratch_stats``: within W = mean over clusters of the mean cosine distance to the
centroid, between = mean pairwise cosine distance among the centroids, loss = held-out mean NLL;
95% BCa intervals from ``reps`` resamples of the clusters (of the blocks for the loss), the same
resamples for every checkpoint and seed.

Trend test (the rows): Δ = S(last checkpoint) - S(first) (mean over seeds), its paired BCa
interval; the verdict is the page's rule (``verdict.verdict``): direction +1 for within and
between, -1 for the loss. Each row also gives Spearman ρ of S against the step (descriptive).

Resume: training checkpoints every ``save_every`` steps (``training.checkpoints``: a run killed
by SIGKILL resumes from the last one, its kept ``step-T`` folders stay); a finished run leaves
``train.json`` beside ``run.json`` (its parameters and the training tokens' hash) and is reused
while those match (a seed folder of other parameters is cleared: it is this step's own cache);
the step's marker ``.scratch_clusters.done.json`` (its parameters) skips it on rerun. The arrays
behind the numbers are written as ``scratch_clusters_arrays.npz`` (steps, within values,
centroids, block NLLs, contexts, their n-gram's position in the held-out stream, labels).

Claims (once per grid): ``fig7-within``, ``fig7-between``, ``fig7-loss`` (figure "Fig. 7").
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError
from .claims import claim, fmt, read
from .config import block_over
from .memo import plain_forward
from .pushaway import recipe_path
from .steps import Run, step, write_result
from .verdict import verdict

NAME = "scratch_clusters"
ROWS = (  # (claim id, statistic, paper direction, the paper's statement)
    ("fig7-within", "within", +1, "within-cluster distance (to the centroid) grows over training"),
    (
        "fig7-between",
        "between",
        +1,
        "between-cluster distance (among centroids) grows over training",
    ),  # fmt: skip
    ("fig7-loss", "loss", -1, "while the held-out loss falls"),
)
DEFAULTS: dict[str, Any] = {  # a config's ``fig7:`` block is read over these
    "recipe": "./configs/train_cpu.yaml",
    "train": {},  # TrainConfig keys over the recipe's (max_steps: the last checkpoint)
    "seeds": [0],
    "checkpoints": [0, 50, 100, 200, 400],  # kept steps; 0 = the initialisation
    "save_every": 50,  # Trainer checkpoints for resume (a multiple of log_steps; 0: none)
    "ngram": 4,
    "min_count": 8,
    "clusters": 100,
    "per_cluster": 16,
    "context": 32,
    "reps": 2000,
}


def folder(out: Path) -> Path:
    return out / "fig7"


def settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``fig7`` block over ``DEFAULTS``; an unknown key or a bad value: ``RepdispError``."""
    block = block_over(cfg, "fig7", DEFAULTS)
    steps = block["checkpoints"]
    if (
        not isinstance(steps, list)
        or len(steps) < 2
        or not all(isinstance(s, int) and s >= 0 for s in steps)
        or steps != sorted(set(steps))
    ):
        raise RepdispError(f"fig7.checkpoints: need 2+ ascending steps >= 0, got {steps!r}")
    if steps[-1] < 1:
        raise RepdispError("fig7.checkpoints: the last step must be >= 1")
    if not block["seeds"] or not all(isinstance(s, int) for s in block["seeds"]):
        raise RepdispError(f"fig7.seeds: give one or more integer seeds, got {block['seeds']!r}")
    for key in ("ngram", "min_count", "clusters", "per_cluster", "context", "reps"):
        if not isinstance(block[key], int) or isinstance(block[key], bool) or block[key] < 1:
            raise RepdispError(f"fig7.{key} must be a positive integer, got {block[key]!r}")
    if not isinstance(block["train"], dict):
        raise RepdispError(f"fig7.train: expected a mapping of recipe keys, got {block['train']!r}")
    return block


def recipe(block: dict[str, Any], seed: int) -> Any:
    """The ``TrainConfig`` of one seed: the recipe file, the block's ``train`` keys, this seed,
    and max_steps = the last checkpoint (evaluated there only)."""
    from ..training.config import load_config

    last = block["checkpoints"][-1]
    over = dict(block["train"]) | {"max_steps": last, "eval_steps": [last], "seed": int(seed)}
    return load_config(recipe_path(block), **over)


def params(cfg: dict[str, Any]) -> dict[str, Any]:
    """What identifies the step's result: the block, the recipe file's text, the grid's seed."""
    block = settings(cfg)
    try:
        text = recipe_path(block).read_text()
    except OSError as e:
        raise RepdispError(f"fig7: cannot read recipe {block['recipe']}: {e}") from None
    return {"fig7": block, "recipe_text": text, "seed": cfg["seed"]}


def heldout_docs(c: Any) -> list[str]:
    """The test part of the recipe's first domain, as ``training.data.prepare_data`` cuts it."""
    from ..training.data import _load, split_docs

    dom = c.domains[0]
    if dom.test is not None:
        return _load(c, dom.test, dom.test_field)
    docs = _load(c, dom.train, dom.text_field)
    fr = [1 - dom.val_fraction - dom.test_fraction, dom.val_fraction, dom.test_fraction]
    return split_docs(docs, fr)[2]


def _same(path: Path, want: dict[str, Any]) -> bool:
    try:
        return json.loads(path.read_text()) == json.loads(json.dumps(want))
    except (OSError, ValueError):
        return False


def snapshots(work: Path, steps: list[int], tokenizer: Any) -> Any:
    """A ``TrainerCallback`` that saves the model (and tokenizer) as ``work/step-T`` at each
    of ``steps`` (0: when training begins), atomically, on the main process."""
    from transformers import TrainerCallback

    from ..core.shards import atomic_folder

    keep = set(steps)

    class Snapshots(TrainerCallback):
        def save(self, state: Any, model: Any) -> None:
            target = work / f"step-{state.global_step}"
            if state.global_step in keep and state.is_world_process_zero and not target.exists():
                with atomic_folder(target) as tmp:
                    model.save_pretrained(tmp)
                    tokenizer.save_pretrained(tmp)

        def on_train_begin(self, args, state, control, model=None, **kw):
            if state.global_step == 0:
                self.save(state, model)

        def on_step_end(self, args, state, control, model=None, **kw):
            self.save(state, model)

    return Snapshots()


def trained(run: Run, block: dict[str, Any], seed: int) -> tuple[Path, Any, Any, dict]:
    """One seed's run: (its folder, TrainConfig, PreparedData, train.json record); reused when
    finished with these parameters, resumed from its last checkpoint when killed."""
    from ..training.data import prepare_data
    from ..training.run import RunOptions, _job_spec, run_train

    c = recipe(block, seed)
    data = prepare_data(c)
    work = folder(run.out) / f"seed-{seed}"
    spec = _job_spec(c, data, [d.name for d in c.domains], 1) | {"keep": block["checkpoints"]}
    steps = block["checkpoints"]
    done = work / "train.json"
    if _same(work / "run.json", spec) and done.exists():
        if all((work / f"step-{t}").is_dir() for t in steps):
            return work, c, data, json.loads(done.read_text())
    if work.exists() and not _same(work / "run.json", spec):
        shutil.rmtree(work)  # this step's own cache, of other parameters: start again
    work.mkdir(parents=True, exist_ok=True)
    (work / "run.json").write_text(json.dumps(spec, sort_keys=True))
    run.say(f"[fig7] seed {seed}: training {steps[-1]} steps, keeping {steps}")
    res = run_train(
        c,
        data,
        False,
        RunOptions(
            checkpoint_dir=work / ".checkpoints",
            save_every=int(block["save_every"]),
            callbacks=[snapshots(work, steps, data.tokenizer)],
        ),
    )
    run.steps.floor += res.floor_s  # plain optimiser steps and evaluations of the recipe
    info = {"n_params": res.n_params, "wall_s": res.wall_s, "history": res.history}
    tmp = done.with_name(done.name + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(done)
    return work, c, data, info


def block_nll(lm: Any, blocks: Any, batch_size: int) -> Any:
    """Mean next-token NLL (nats) of every block (rows of token ids) under ``lm``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    out = []
    with lm.inference():
        for i in range(0, len(blocks), batch_size):
            x = torch.as_tensor(np.asarray(blocks[i : i + batch_size]), device=lm.device)
            logits = lm.model(input_ids=x).logits[:, :-1].float()
            nll = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
            out.append(nll.mean(dim=1).double().cpu().numpy())
    return np.concatenate(out)


@step(over="grid", when="fig7")
def scratch_clusters(run: Run) -> None:
    import numpy as np

    from ..analyses.clusters import sample_contexts
    from ..analyses.ngrams import mine_ngrams
    from ..core.extract import extract
    from ..core.models import load_model
    from ..core.tokenizer import token_stream
    from .scratch_stats import ScratchClusters, analyse, cluster_summary

    cfg, block, top = run.cfg, settings(run.cfg), folder(run.out)
    p = params(cfg)
    if run.steps.done(top, NAME, p, needs=(f"{NAME}.json", f"{NAME}_arrays.npz")):
        run.say("[fig7] done, skipped")
        return
    t0 = time.perf_counter()
    seeds, steps = [int(s) for s in block["seeds"]], list(block["checkpoints"])
    runs = [trained(run, block, s) for s in seeds]
    _, c, data, _ = runs[0]
    dom = c.domains[0]
    stream = token_stream(data.tokenizer, heldout_docs(c))
    mined = mine_ngrams(stream, block["ngram"], block["min_count"])
    if len(mined) < 2:
        raise RepdispError(
            f"fig7: {len(mined)} {block['ngram']}-gram(s) occur {block['min_count']}+ times in "
            f"the {len(stream):,} held-out tokens; lower fig7.min_count or fig7.ngram"
        )

    def load(path: Path) -> Any:
        return load_model(str(path), cfg["device"], "float32")

    first = load(runs[0][0] / f"step-{steps[0]}")
    first.check_window(block["context"], "fig7.context")
    ctx = sample_contexts(
        stream, mined, block["context"], block["per_cluster"], block["clusters"],
        first.bos_id, int(cfg["seed"]), f"{dom.name} (held-out part)",
    )  # fmt: skip
    k = len(ctx.cluster_sizes)
    within, cents, nlls = [], [], []
    for work, _, d, _ in runs:
        ws, cs, ls = [], [], []
        for t in steps:
            lm = load(work / f"step-{t}")
            ex = extract(lm, ctx.segments, "final", "last", perplexity=False, skip_first=0,
                         batch_size=cfg["batch_size"], cache=False, progress=False)  # fmt: skip
            run.steps.floor += plain_forward(lm, ctx.segments.ids, cfg["batch_size"])
            run.steps.floor += plain_forward(lm, d.test[dom.name], cfg["batch_size"])
            w, cen = cluster_summary(ex.get(ex.sites[0], "last"), ctx.labels, k)
            ws.append(w)
            cs.append(cen)
            ls.append(block_nll(lm, d.test[dom.name], cfg["batch_size"]))
        within.append(ws)
        cents.append(cs)
        nlls.append(ls)
    within, cents, nlls = np.asarray(within), np.asarray(cents), np.asarray(nlls)
    rows, trends = analyse(steps, within, cents, nlls, int(block["reps"]), int(cfg["seed"]))
    tok = data.tokenizer
    table = [
        {"cluster": i, "ngram": tok.decode(mined.ngrams[r].tolist()),
         "count": int(mined.counts[r]), "used": int(ctx.cluster_sizes[i])}
        for i, r in enumerate(ctx.cluster_ngrams)
    ]  # fmt: skip
    result = ScratchClusters(
        recipe=c.name,
        data=dom.test or dom.train,
        seeds=seeds,
        steps=steps,
        n_params=int(runs[0][3]["n_params"]),
        site=ex.sites[0],
        ngram=block["ngram"],
        min_count=block["min_count"],
        context=block["context"],
        per_cluster=block["per_cluster"],
        clusters_asked=block["clusters"],
        ngrams_found=len(mined),
        clusters_used=k,
        contexts=len(ctx.labels),
        heldout_tokens=len(stream),
        heldout_blocks=int(nlls.shape[2]),
        block_size=c.block_size,
        reps=int(block["reps"]),
        checkpoints=rows,
        trends=trends,
        clusters=table,
        seconds=time.perf_counter() - t0,
        train_seconds=[float(r[3]["wall_s"]) for r in runs],
    )
    top.mkdir(parents=True, exist_ok=True)
    np.savez(
        top / f"{NAME}_arrays.npz", steps=np.asarray(steps), seeds=np.asarray(seeds),
        within=within, centroids=cents, nll=nlls, ids=ctx.segments.ids, labels=ctx.labels,
        starts=ctx.segments.index,
    )  # fmt: skip
    write_result(top, NAME, result, segs=ctx.segments, seed=cfg["seed"])
    run.steps.finish(top, NAME, p)
    run.say(f"[fig7] {len(seeds)} run(s), {k} clusters, {result.seconds:.0f} s")


def _command(cfg: dict[str, Any], cid: str) -> str:
    scale = "gpu" if str(cfg.get("device")).startswith("cuda") else "cpu"
    return f"repdisp reproduce --config configs/reproduce_{scale}.yaml --only {cid} --out DIR"


def rows_of(cfg: dict[str, Any], doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The three Fig. 7 rows of a finished result."""
    trends = {t["stat"]: t for t in doc["trends"]}
    seeds, steps = doc["seeds"], doc["steps"]
    seeds_txt = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"
    scope = (
        f"GPT-2 from scratch ({doc['recipe']}, {doc['n_params']:,} params) · held-out part of "
        f"{Path(doc['data']).name}: {doc['clusters_used']} clusters of {doc['ngram']}-gram "
        f"contexts ({doc['contexts']} contexts of {doc['context']} tokens, ≥{doc['min_count']} "
        f"occurrences; loss on {doc['heldout_blocks']} blocks of {doc['block_size']}) · "
        f"checkpoints at steps {'/'.join(map(str, steps))} · {seeds_txt}"
    )
    rows = []
    for cid, stat, direction, desc in ROWS:
        t = trends[stat]
        digits = 3 if stat == "loss" else 4
        per = ", ".join(
            f"{r['step']}: {r[stat]:.{digits}f} [{r[f'{stat}_ci_low']:.{digits}f}, "
            f"{r[f'{stat}_ci_high']:.{digits}f}]"
            for r in doc["checkpoints"]
        )
        sym = {"within": "W", "between": "B", "loss": "L"}[stat]
        a = t.get("after_init")
        after = (
            f"; from step {steps[1]} (first trained checkpoint): {a['value']:+.{digits}f} "
            f"[{a['ci_low']:+.{digits}f}, {a['ci_high']:+.{digits}f}]"
            if a
            else ""
        )
        rows.append(
            {
                "id": cid,
                "figure": "Fig. 7",
                "claim": f"§2.3 Fig. 7 {desc}",
                "scope": scope,
                "paper": f"{sym}(step {steps[-1]}) − {sym}(step {steps[0]}) "
                f"{'>' if direction > 0 else '<'} 0",
                "result": f"Δ{sym} {fmt(t, digits)} over {t['n']} "
                f"{'held-out blocks' if stat == 'loss' else 'clusters'}; Spearman ρ(step) "
                f"{t['spearman']:+.2f} [{t['spearman_ci_low']:+.2f}, {t['spearman_ci_high']:+.2f}]"
                f" (percentile){after}; per step {per}",
                "verdict": verdict(t["ci_low"], t["ci_high"], direction),
                "command": _command(cfg, cid),
                "n_seeds": len(seeds),
                "n_clusters": doc["clusters_used"],
                "steps": steps,
                "estimate": {k: t[k] for k in ("value", "ci_low", "ci_high", "method", "n")},
            }
        )
    return rows


@claim(over="grid", when="fig7", ids=tuple(r[0] for r in ROWS), steps=(NAME,))
def fig7_rows(cfg: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Fig. 7: the three rows once the step has finished (none before)."""
    doc = read(folder(out) / f"{NAME}.json")
    return rows_of(cfg, doc) if doc else []
