"""kNN-LM perplexity per candidate key in the grid (§3.3): does dispersion pick the best key?

Step ``knnlm_keys_ppl`` (per cell, when ``cfg["knnlm"]``):

- candidates: the last block's ``h_att`` (``L.attn``) and ``h_ffn`` (``L.ffn``), and the most
  dispersed block output ``I.ffn`` (highest dispersion of the last-token vectors of the cell's
  main extraction, ``memo``; it may be ``L.ffn`` itself, then two candidates). The dispersion
  ranking (mean pairwise cosine distance of the N last-token vectors, ``core.geometry``) comes
  from that extraction; the key dispersion picks is the most dispersed candidate.
- text: the corpus's token stream (documents joined by EOS); the datastore holds its first
  ``datastore_tokens`` tokens, the held-out text is the next ``eval_tokens`` (disjoint; when the
  corpus is shorter, 80% / 20% of it).
- ``applications.knnlm.build_datastore`` (every candidate in one forward pass, windows of
  ``context`` tokens with ``stride``, exact flat index) in ``knnlm_datastore/`` of the cell
  (resumable), then ``evaluate_knnlm`` on the held-out text (k neighbours, λ over
  ``lmbda_grid`` and T over ``temperature_grid``, the best pair per key, tuned on the held-out
  text itself as ``repdisp knnlm select`` does).

Statistic: per held-out target t and key s, log p_s(t) of the kNN-LM at its best (λ, T). The
held-out targets are cut into consecutive segments of ``segment_tokens`` (a remainder is
dropped). The effect is

    Δ = mean_t log p_pick(t) - mean_t log p_other(t)   (nats per token; > 0: the pick is better)

where "pick" is the key dispersion picks and "other" the lowest-perplexity other key on the
whole held-out text. CI: percentile bootstrap over held-out segments, ``reps`` replicates, the
same resampled segments for both keys (paired). Claim (id ``knnlm-ppl``): direction +1 by
``verdict.verdict``; the row lists the ppl of every key and the base LM's.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .claims import Where, claim, command
from .config import cell_params, label, stem
from .memo import main_extraction, plain_forward_lengths
from .steps import Run, step, write_result
from .verdict import verdict

if TYPE_CHECKING:
    import numpy as np

NAME = "knnlm_keys_ppl"


def candidates(ex: Any, n_blocks: int) -> tuple[list[str], dict[str, float]]:
    """(candidate sites, their last-token dispersion): L.attn, L.ffn, the most dispersed I.ffn."""
    from ..core.geometry import dispersion

    last = n_blocks - 1
    blocks = {f"{i}.ffn": dispersion(ex.get(f"{i}.ffn", "last")) for i in range(n_blocks)}
    top = max(blocks, key=blocks.__getitem__)
    names = list(dict.fromkeys([f"{last}.attn", f"{last}.ffn", top]))
    disp = {s: blocks[s] if s in blocks else dispersion(ex.get(s, "last")) for s in names}
    return names, disp


def paired_margin(
    log_p: dict[str, np.ndarray], pick: str, other: str, seg: int, reps: int, seed: int
) -> dict[str, Any]:
    """Δ = mean log p(pick) - mean log p(other) per target, with a percentile bootstrap CI over
    consecutive segments of ``seg`` targets (the same segments for both: paired)."""
    import numpy as np

    n = len(log_p[pick]) // seg
    if n < 2:
        from ..core.errors import RepdispError

        raise RepdispError(
            f"knnlm: fewer than 2 held-out segments of {seg} tokens; add eval_tokens"
        )
    per = (log_p[pick][: n * seg] - log_p[other][: n * seg]).reshape(n, seg).mean(1)
    rng = np.random.default_rng(seed)
    boots = per[rng.integers(0, n, (reps, n))].mean(1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"value": float(per.mean()), "ci_low": float(lo), "ci_high": float(hi), "segments": n}


def window_floor(lm: Any, store: int, held: int, win: dict[str, int]) -> float:
    """The floor of the kNN-LM's passes: one plain forward over the sliding windows of each
    stream, BOS included, in the order they run: the body alone over the datastore's windows
    (its keys are hidden states; no logits are needed), body and LM head over the held-out
    ones (their perplexity needs the model's distribution)."""
    from ..applications.knnlm.windows import plan_windows

    extra = int(lm.bos_id is not None)

    def lengths(n: int) -> list[int]:
        return [e - b + extra for b, e, _ in plan_windows(n, win["context"], win["stride"])]

    bs = win["batch_size"]
    return plain_forward_lengths(
        lm, lengths(store), bs, order="given", head=False
    ) + plain_forward_lengths(lm, lengths(held), bs, order="given")


@step(over="cell", when="knnlm")
def knnlm_step(run: Run, spec: str, data: str) -> None:
    from ..applications.knnlm import Datastore, build_datastore, evaluate_knnlm
    from ..core.corpus import token_stream
    from ..io.results import GenericResult

    cfg, folder = run.cfg, run.cell(spec, data)
    k = cfg["knnlm"]
    p = {"model": spec, "data": data, "dtype": cfg["dtype"]} | cell_params(cfg, spec, data)
    p |= {"knnlm": k}
    if run.steps.done(folder, NAME, p):
        run.say(f"[{label(spec)} x {stem(data)}] kNN-LM perplexity per key: done, skipped")
        return
    t = time.perf_counter()
    lm = run.model(spec)
    segs, ex, _ = main_extraction(run, spec, data, lm)
    names, disp = candidates(ex, lm.n_blocks)
    tokens = token_stream(lm.tokenizer, run.docs(data))
    n_store, n_eval = k["datastore_tokens"], k["eval_tokens"]
    if n_store + n_eval > len(tokens):
        n_store = int(0.8 * len(tokens))
        n_eval = len(tokens) - n_store
    store, held = tokens[:n_store], tokens[n_store : n_store + n_eval]
    run.say(
        f"[{label(spec)} x {stem(data)}] kNN-LM: datastore {len(store)} tokens, held-out "
        f"{len(held)}, keys {', '.join(names)}"
    )
    ds = folder / "knnlm_datastore"
    win = {"context": k["context"], "stride": k["stride"], "batch_size": k["batch_size"]}
    build = build_datastore(
        lm, store, ds, sites=names, source=data, index="flat", progress=run.progress, **win
    )
    ev = evaluate_knnlm(
        lm, Datastore.open(ds), held, source=data, sites=names, k=k["k"],
        lmbda=k["lmbda_grid"][0], temperature=k["temperature_grid"][0],
        lmbda_grid=k["lmbda_grid"], temperature_grid=k["temperature_grid"],
        nprobe=1, progress=run.progress, **win,
    )  # fmt: skip
    run.steps.floor += window_floor(lm, len(store), len(held), win)
    ppl = {s.site: s.best_ppl for s in ev.sites}
    pick = max(names, key=disp.__getitem__)
    best = min(names, key=ppl.__getitem__)
    other = min((s for s in names if s != pick), key=ppl.__getitem__)
    margin = paired_margin(ev.log_p, pick, other, k["segment_tokens"], k["reps"], cfg["seed"])
    doc = {
        "model": lm.name, "data": data, "candidates": names, "dispersion": disp,
        "ppl": ppl, "base_ppl": ev.base_ppl, "picked": pick, "best": best, "other": other,
        "picked_best": pick == best, "margin_nats": margin,
        "best_lmbda": {s.site: s.best_lmbda for s in ev.sites},
        "best_temperature": {s.site: s.best_temperature for s in ev.sites},
        "datastore_tokens": len(store), "n_keys": build.n_keys,
        "eval_tokens": len(held), "n_targets": ev.n_targets, "settings": k,
        "seconds": time.perf_counter() - t,
    }  # fmt: skip
    write_result(folder, NAME, GenericResult(doc), lm, segs, cfg["seed"], figure=False)
    run.steps.finish(folder, NAME, p)
    run.say(f"  kNN-LM perplexity per key {doc['seconds']:.0f} s (pick {pick}, best {best})")


@claim(
    over="cell",
    reads=(f"{NAME}.json",),
    missing="kNN-LM perplexity per key",
    when="knnlm",
    ids=("knnlm-ppl",),
    steps=("knnlm_step",),
)
def knnlm_rows(cfg: dict[str, Any], at: Where, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """§3.3: the key dispersion picks gives the lowest kNN-LM perplexity (paired over segments)."""
    m = doc["margin_nats"]
    per = "; ".join(
        f"{s} ppl {doc['ppl'][s]:.3f} (D={doc['dispersion'][s]:.4f})" for s in doc["candidates"]
    )
    s = doc["settings"]
    row = {
        "id": "knnlm-ppl",
        "figure": "§3.3 kNN-LM",
        "claim": "§3.3 the more dispersed key layer gives the lower kNN-LM perplexity "
        "(dispersion ranking picks the best key)",
        "scope": f"{at.scope}, datastore {doc['datastore_tokens']} tokens, held-out "
        f"{doc['n_targets']} targets ({m['segments']} segments of {s['segment_tokens']}), "
        f"k={s['k']}, context {s['context']}",
        "paper": "the most dispersed key has the lowest kNN-LM ppl",
        "result": f"dispersion picks {doc['picked']}, lowest ppl {doc['best']}; {per}; base LM "
        f"ppl {doc['base_ppl']:.3f}; log p(pick) - log p({doc['other']}) = {m['value']:+.4f} "
        f"[{m['ci_low']:+.4f}, {m['ci_high']:+.4f}] nats/token (paired bootstrap over held-out "
        "segments; λ, T tuned on them)",
        "verdict": verdict(m["ci_low"], m["ci_high"], 1),
        "command": command(cfg, at.spec, at.data, "--only knnlm-ppl"),
    }
    return [row]
