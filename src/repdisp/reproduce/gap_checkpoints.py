"""§3.2 / Tables 3-4 in the grid: checkpoints ranked by the dispersion gap G vs domain accuracy.

The paper ranks checkpoints of one model family by G (domain tokens vs everyday tokens, from
the output-embedding rows alone) and finds that the ranking follows domain accuracy (Spearman
above 0.95). Config, inside the ``gap:`` block (``check_block`` validates it when the config
loads; a fault is one ``RepdispError`` line):

    checkpoints   list of {model: PATH | HUB_ID | GGUF | URL, accuracy: NUMBER (optional),
                  name: LABEL (optional)}: every entry has an accuracy (the user's, from a model
                  card or lm-eval), or none has one and each is measured
    train         optional: {recipe: configs/train_*.yaml, save_at: [STEP, ...], save_every:
                  N, any recipe key}: one GPT-2 trained from scratch (λ = 0), its weights
                  saved at each step of ``save_at``; those checkpoints join the list, measured
    perplexity    {data, text_field, seq_len, windows, batch_size}: the domain text and how
                  much of it measures a checkpoint without accuracy (``applications.gap
                  .checkpoints``: ppl over the first ``windows`` windows of ``seq_len`` tokens;
                  lower is better, so such a checkpoint ranks by −ppl)

Step ``gap_checkpoints`` (once per grid, when the block lists checkpoints or a training run):
trains (``gap_train``: its own marker, resumable after kill -9 from the Trainer checkpoint of
every ``save_every`` steps; the saved ``step-N`` folders stay), then per checkpoint reads G
from the output-embedding rows only (no model object; ``applications.gap.rows``) and, when it
has no accuracy, loads it to measure the perplexity (one entry at a time, cached in
``entries.json`` so a killed run resumes); writes ``out/gap_checkpoints/gap_checkpoints.json``.

Claim ``gap-checkpoints``: Spearman ρ(G, accuracy) (or ρ(G, −ppl)) over the k checkpoints,
with the exact permutation test over all k! orderings for k <= 8 (``applications.gap
.ranktest``: no asymptotic p, no bootstrap over k points); its 2.5%-97.5% null band is shown
beside ρ. Verdict: ``ranktest.rank_verdict`` (paper's direction +1): supported when the
two-sided exact p <= 0.05 and ρ > 0, contradicted when p <= 0.05 and ρ < 0, else
inconclusive at this k; k = 4 can never decide (its floor is 2/24). Checkpoints that do not
share one tokenizer make the row inconclusive (their token sets differ).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError
from .claims import claim, read
from .memo import plain_forward_lengths
from .steps import Run, step, write_result

NAME = "gap_checkpoints"
_GAP_KEYS = ("domain", "reference", "checkpoints", "train", "perplexity")
_ENTRY_KEYS = ("model", "accuracy", "name")
_PPL_KEYS = ("data", "text_field", "seq_len", "windows", "batch_size")
_TRAIN_OWN = ("recipe", "save_at", "save_every")


def folder(out: Path) -> Path:
    return out / "gap_checkpoints"


def _exists(model: str) -> bool:
    from ..applications.gap.remote import is_url
    from ..core.hub import is_hub_id
    from ..core.registry import BUNDLED

    if model in BUNDLED or is_url(model) or Path(model).expanduser().exists():
        return True
    local = model.startswith((".", "/", "~")) or model.endswith((".gguf", ".safetensors"))
    return not local and "/" in model and is_hub_id(model)


def _recipe_path(spec: dict[str, Any]) -> Path:
    from .pushaway import recipe_path

    return recipe_path(spec)


def check_block(block: Any, data_files: bool = True) -> None:
    """The ``gap:`` block's checkpoint settings (module docstring); a one-line error.
    ``data_files=False`` (when the config loads) leaves the perplexity text's existence to the
    step, as every other step's data: a config naming the shared data loads without it."""
    from ..core.validate import check_keys

    if not block:
        return
    if not isinstance(block, dict):
        raise RepdispError(f"gap: expected a mapping, got {type(block).__name__}")
    check_keys("gap", block, _GAP_KEYS)
    entries = block.get("checkpoints") or []
    if not isinstance(entries, list):
        raise RepdispError("gap.checkpoints: expected a list of {model, accuracy, name}")
    for i, e in enumerate(entries):
        where = f"gap.checkpoints[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("model"), str):
            raise RepdispError(f"{where}: expected {{model: PATH|HUB_ID|GGUF, accuracy: N}}")
        check_keys(where, e, _ENTRY_KEYS)
        if e.get("accuracy") is not None and not isinstance(e["accuracy"], int | float):
            raise RepdispError(f"{where}: accuracy must be a number, got {e['accuracy']!r}")
        if not _exists(e["model"]):
            raise RepdispError(f"{where}: {e['model']}: no such file or folder")
    names = [name_of(e) for e in entries]
    if len(set(names)) < len(names):
        raise RepdispError(f"gap.checkpoints: names repeat ({names}); give each a name")
    given = [e.get("accuracy") is not None for e in entries]
    tb = block.get("train")
    if (any(given) and not all(given)) or (any(given) and tb):
        raise RepdispError(
            "gap.checkpoints: give an accuracy for every checkpoint or for none (then each is "
            "measured as domain perplexity, as the train: run's are); a mix cannot be ranked"
        )
    n = len(entries)
    if tb:
        if not isinstance(tb, dict) or "recipe" not in tb:
            raise RepdispError("gap.train: expected {recipe: FILE, save_at: [STEP, ...], ...}")
        if not _recipe_path(tb).is_file():
            raise RepdispError(f"gap.train: recipe {tb['recipe']}: no such file")
        steps = tb.get("save_at")
        if not isinstance(steps, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in steps
        ):
            raise RepdispError(f"gap.train.save_at: a list of positive steps, got {steps!r}")
        if len(set(steps)) < len(steps):
            raise RepdispError(f"gap.train.save_at: steps repeat: {steps}")
        n += len(steps)
    if n and n < 3:
        raise RepdispError(f"gap: {n} checkpoint(s); ranking them needs at least 3")
    if n and not all(given):
        ppl = block.get("perplexity")
        if not isinstance(ppl, dict) or not ppl.get("data"):
            raise RepdispError("gap.perplexity: {data: FILE, ...} is needed to measure checkpoints")
        check_keys("gap.perplexity", ppl, _PPL_KEYS)
        data = str(ppl["data"])
        from ..core.texts import BUILTIN_SOURCES

        local = data not in BUILTIN_SOURCES and not data.startswith("hf:")
        if data_files and local and not Path(data).exists():
            raise RepdispError(f"gap.perplexity.data: {data}: no such file")
        for key in ("seq_len", "windows", "batch_size"):
            v = ppl.get(key, 2)
            if not isinstance(v, int) or isinstance(v, bool) or v < 2 - (key != "seq_len"):
                raise RepdispError(f"gap.perplexity.{key}: a positive integer, got {v!r}")


def name_of(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or Path(str(entry["model"]).rstrip("/")).name)


def _train_params(tb: dict[str, Any]) -> dict[str, Any]:
    return dict(tb) | {"recipe_text": _recipe_path(tb).read_text()}


def params(block: dict[str, Any]) -> dict[str, Any]:
    """What identifies the step's result: the block, with the recipe file's text."""
    p = {k: block.get(k) for k in _GAP_KEYS}
    if block.get("train"):
        p["train"] = _train_params(block["train"])
    return p


def train_checkpoints(run: Run, tb: dict[str, Any], top: Path) -> tuple[list[dict], dict]:
    """Train the ``train:`` run (or find it done) and return its checkpoint entries and info."""
    par = _train_params(tb)
    done = read(top / "gap_train.json")
    if done and run.steps.done(top, "gap_train", par):
        return done["checkpoints"], done["run"]
    from ..core.shards import atomic_folder, atomic_write
    from ..training.config import load_config
    from ..training.data import prepare_data
    from ..training.run import RunOptions, run_train

    save_at = sorted(tb["save_at"])
    over = {k: v for k, v in tb.items() if k not in _TRAIN_OWN}
    over.setdefault("max_steps", save_at[-1])
    over.setdefault("aux_weight", 0.0)
    cfg = load_config(_recipe_path(tb), **over)
    if save_at[-1] > cfg.max_steps:
        raise RepdispError(f"gap.train.save_at: step {save_at[-1]} > max_steps {cfg.max_steps}")
    data = prepare_data(cfg)
    ckpts = top / "checkpoints"
    from transformers import TrainerCallback

    class SaveAt(TrainerCallback):
        """The weights and tokenizer at each step of ``save_at``, as a safetensors folder."""

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step in save_at:
                with atomic_folder(ckpts / f"step-{state.global_step}") as tmp:
                    model.save_pretrained(tmp, safe_serialization=True)
                    data.tokenizer.save_pretrained(tmp)

    t0 = time.perf_counter()
    opts = RunOptions(
        checkpoint_dir=top / "work", save_every=int(tb.get("save_every", 0)), callbacks=[SaveAt()]
    )
    res = run_train(cfg, data, False, opts)
    run.steps.floor += res.floor_s  # plain optimiser steps and evaluations of the recipe
    entries = [{"model": str(ckpts / f"step-{s}"), "name": f"step-{s}", "step": s} for s in save_at]
    info = {
        "recipe": cfg.name,
        "domains": [d.name for d in cfg.domains],
        "max_steps": cfg.max_steps,
        "save_at": save_at,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "aux_weight": cfg.aux_weight,
        "n_params": res.n_params,
        "evals": res.evals,
        "wall_s": time.perf_counter() - t0,
    }
    text = json.dumps({"checkpoints": entries, "run": info}, indent=1).encode()
    top.mkdir(parents=True, exist_ok=True)
    atomic_write(top / "gap_train.json", lambda f: f.write(text))
    run.steps.finish(top, "gap_train", par)
    run.say(f"[gap-checkpoints] trained {cfg.max_steps} steps, {len(entries)} checkpoints")
    return entries, info


def measure(run: Run, block: dict[str, Any], entries: list[dict], top: Path, par: dict) -> list:
    """Per checkpoint: G (rows only) and, without an accuracy, the domain perplexity. Each
    finished entry goes into ``entries.json`` (keyed by the step's parameters)."""
    from ..applications.gap.checkpoints import components, domain_perplexity, domain_texts, gap_of
    from ..core.shards import atomic_write

    cache_path = top / "entries.json"
    cache = read(cache_path) or {}
    key = json.loads(json.dumps(par))
    done = cache.get("done", {}) if cache.get("params") == key else {}
    ppl = block.get("perplexity") or {}
    docs, tokenizers, rows = None, {}, []
    for e in entries:
        name = name_of(e)
        if name not in done:
            t = time.perf_counter()
            gap, tok = gap_of(
                e["model"], block["domain"], block.get("reference", "everyday"), tokenizers
            )
            row = {"name": name, "model": e["model"], "step": e.get("step")}
            row |= components(gap) | {"tokenizer": tok[:16], "gap_seconds": time.perf_counter() - t}
            row |= {"accuracy": e.get("accuracy"), "ppl": None}
            if e.get("accuracy") is None:
                docs = docs or domain_texts(ppl["data"], ppl.get("text_field", "text"))
                lm = run.load(e["model"])
                m = domain_perplexity(
                    lm,
                    docs,
                    int(ppl.get("seq_len", 128)),
                    int(ppl.get("windows", 64)),
                    int(ppl.get("batch_size", 8)),
                )
                run.steps.floor += plain_forward_lengths(
                    lm, [int(ppl.get("seq_len", 128))] * int(m["windows"]),
                    int(ppl.get("batch_size", 8)), order="given",
                )  # fmt: skip
                del lm
                row |= {"ppl": m["ppl"], "ppl_windows": m["windows"], "ppl_tokens": m["tokens"]}
            done[name] = row
            top.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"params": key, "done": done}, indent=1).encode()
            atomic_write(cache_path, lambda f, t=text: f.write(t))
            run.say(f"[gap-checkpoints] {name}: G={row['cosine_gap']:.4f} ppl={row['ppl']}")
        rows.append(done[name])
    return rows


@step(over="grid", when="gap")
def gap_checkpoints(run: Run) -> None:
    block = run.cfg["gap"]
    if not (block.get("checkpoints") or block.get("train")):
        return
    check_block(block)
    top, par = folder(run.out), params(block)
    if run.steps.done(top, NAME, par):
        return
    from ..applications.gap.checkpoints import accuracy_of
    from ..applications.gap.ranktest import spearman_exact

    t0 = time.perf_counter()
    entries, info = [dict(e) for e in block.get("checkpoints") or []], None
    if block.get("train"):
        made, info = train_checkpoints(run, block["train"], top)
        entries += made
    rows = measure(run, block, entries, top, par)
    test = spearman_exact([r["cosine_gap"] for r in rows], [accuracy_of(r) for r in rows], 1)
    from .gap_checkpoints_result import GapCheckpoints  # numpy-free parser: loads with a run

    measured = all(e.get("accuracy") is None for e in entries)
    res = GapCheckpoints(
        domain=block["domain"],
        reference=block.get("reference", "everyday"),
        metric="cosine",
        accuracy_kind="measured perplexity" if measured else "given",
        checkpoints=rows,
        spearman=test,
        shared_tokenizer=len({r["tokenizer"] for r in rows}) == 1,
        train=info,
        perplexity=block.get("perplexity") if measured else None,
        seconds=time.perf_counter() - t0,
        gap_seconds=sum(r["gap_seconds"] for r in rows),
    )
    write_result(top, NAME, res, seed=run.cfg["seed"], figure=False)
    run.steps.finish(top, NAME, par)
    run.say(f"[gap-checkpoints] {len(rows)} checkpoints, rho={test['value']:+.3f}")


def _command(cfg: dict[str, Any]) -> str:
    scale = "gpu" if str(cfg.get("device")).startswith("cuda") else "cpu"
    return f"repdisp reproduce --config configs/reproduce_{scale}.yaml --only gap-checkpoints --out DIR"


def row_of(cfg: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """The page's row from a step's result (module docstring)."""
    from ..applications.gap.ranktest import rank_verdict  # numpy: not at parser build

    t, rows, k = doc["spearman"], doc["checkpoints"], len(doc["checkpoints"])
    measured = doc["accuracy_kind"] == "measured perplexity"
    per = "; ".join(
        f"{r['name']} G={r['cosine_gap']:.4f} "
        + (f"ppl={r['ppl']:.2f}" if measured else f"acc={r['accuracy']:g}")
        for r in rows
    )
    tr = doc.get("train")
    if tr:
        scope = (
            f"k={k} checkpoints of one from-scratch GPT-2 ({tr['recipe']}, {tr['n_params']:,} "
            f"params, λ=0, seed {tr['seed']}) at steps {', '.join(map(str, tr['save_at']))} of "
            f"{tr['max_steps']}"
        )
    else:
        scope = f"k={k} checkpoints (config's list)"
    scope += f" · G of {doc['domain']} vs {doc['reference']} tokens (cosine)"
    if measured:
        p = doc.get("perplexity") or {}
        w = rows[0].get("ppl_windows")
        scope += (
            f" · accuracy = −(domain perplexity), measured on {w} windows × "
            f"{p.get('seq_len', 128)} tokens of {Path(str(p.get('data'))).name} (lower ppl = "
            "better, so ranked by −ppl)"
        )
    else:
        scope += " · accuracies given in the config"
    target = "−ppl" if measured else "accuracy"
    result = (
        f"Spearman ρ(G, {target}) = {t['value']:+.3f}, exact two-sided p = {t['p_value']:.3g} "
        f"({t['method']}; floor {t['p_floor']:.3g}); null 95% band [{t['null_low']:+.3f}, "
        f"{t['null_high']:+.3f}]; no CI (a bootstrap over {k} checkpoints is not one); {per}"
    )
    verdict = rank_verdict(t, 1)
    if not doc["shared_tokenizer"]:
        verdict = "inconclusive (the checkpoints do not share one tokenizer)"
    return {
        "id": "gap-checkpoints",
        "figure": "§3.2 Tables 3-4",
        "claim": "§3.2 ranking checkpoints by the dispersion gap G orders them by domain accuracy",
        "scope": scope,
        "paper": "Spearman ρ(G, accuracy) > 0 (above 0.95 in the paper)",
        "result": result,
        "verdict": verdict,
        "command": _command(cfg),
        "p": t["p_value"],
        "n_checkpoints": k,
        "estimate": {"value": t["value"], "p_value": t["p_value"], "method": t["method"]},
    }


@claim(over="grid", when="gap", ids=("gap-checkpoints",), steps=("gap_checkpoints",))
def gap_checkpoint_rows(cfg: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """§3.2 Tables 3-4: one row once the step is done (none while it is not, or not asked)."""
    block = cfg["gap"] or {}
    if not (block.get("checkpoints") or block.get("train")):
        return []
    doc = read(folder(out) / f"{NAME}.json")
    return [row_of(cfg, doc)] if doc else []
