"""repdisp reproduce: the paper's evaluation grid in one resumable command, and a findings page.

For each model x corpus: ONE extraction (every block output, the last block's attention
sub-layer and the final site; last-token vectors, within-segment dispersion, perplexities) gives
ppl-vs-dispersion (sequence-level and last-token, both modes), the layer-wise analysis, and the
kNN key profile (Table 1: per seed, N of the extracted windows drawn at random - the segments are
a uniform sample of the corpus's non-overlapping windows, so these are uniform random chunks of
``seq_len`` tokens - and the dispersion of their last-token vectors at the last block's h_att and
h_ffn); per model the dispersion gap of its output embeddings; per model x multiple-choice task
the accuracy probe and hard slices. Then ``findings.md``/``findings.html``
with a claims table whose verdicts follow one stated rule (``VERDICT_RULE``).

Resume: extractions go through the shard cache (a killed run restarts from its finished shards;
a second model adds only its own work); each step writes its files and then a ``.done.json``
marker with the step's parameters, and a step whose marker matches is skipped on rerun. The
findings page is rewritten after every step, so verdicts appear as they come out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import time
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError
from . import checks, model_from_args

VERDICT_RULE = (
    "Verdict rule (applied by the code, not by hand): each claim has a direction in the paper. "
    "**supported** when this run's 95% CI excludes 0 on the paper's side, **contradicted** when "
    "it excludes 0 on the other side, otherwise **inconclusive at this N**. Layer-wise rows count "
    "blocks: supported when more than half of the second-half blocks have a CI on the paper's "
    "side and none on the other side, contradicted in the mirror case, else inconclusive. "
    "For an inconclusive slope the row gives the N at which its CI would exclude 0 if the "
    "estimate held (the CI's reach h from the estimate toward 0 shrinks as 1/sqrt(N): "
    "N·(h/|slope|)²), a planning figure for a larger run."
)

_SHARED = "${REPDISP_SHARED_DATA}"
_COMMON: dict[str, Any] = {  # what both scales share; load_config deep-copies a scale
    "data": [
        f"{_SHARED}/wikitext-2-raw/wiki.test.raw",
        f"{_SHARED}/cnn_dailymail/frank_cnndm_test_250.jsonl",
        f"{_SHARED}/pubmed/pubmedqa_abstracts_1000.jsonl",
    ],
    "segments_for": {},
    "bin_size": 50,
    "bins": 10,
    "curve_bins": 50,
    "stats_reps": 1000,
    "permutations": 1000,
    "layer_stats_reps": 200,
    "bootstrap": 2000,
    "seed": 0,
    "knn": {"chunks": [10, 50, 100], "seeds": 10},
    "gap": {"domain": "python", "reference": "everyday"},
    "hard_slices": {"fraction": 0.2},
}
SCALES: dict[str, dict[str, Any]] = {
    "cpu": _COMMON
    | {
        "models": ["smollm2-135m", "gemma3-270m"],
        "segments": 2000,
        "seq_len": 128,
        "dtype": "auto",
        "device": "auto",
        "batch_size": 8,
        "contexts": [128],
        "mc": [{"task": "arc-challenge", "data": f"{_SHARED}/arc", "limit": 200}],
        "probe": {"sample": 50, "seeds": 10},
    },
    "gpu": _COMMON
    | {
        "models": ["meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-7B", "mistralai/Mistral-7B-v0.3"],
        "segments": 100000,
        "seq_len": 512,
        "dtype": "bfloat16",
        "device": "cuda",
        "batch_size": 32,
        "contexts": [16, 64, 128, 256],
        "mc": [
            {"task": "arc-challenge", "data": f"{_SHARED}/arc", "limit": None},
            {"task": "mmlu", "data": f"{_SHARED}/mmlu/val", "limit": None},
        ],
        "probe": {"sample": 100, "seeds": 10},
    },
}
_KEYS = set(SCALES["cpu"])


def register(sub: argparse._SubParsersAction) -> None:
    from .options import (
        DATA_HELP,
        AppendAction,
        add_batch_option,
        add_model_options,
        add_output_options,
    )
    from .options import _source as source

    p = sub.add_parser(
        "reproduce",
        help="the paper's evaluation grid (models x corpora), resumable, with a findings page",
    )
    c = p.add_argument_group("grid options")
    c.add_argument("--config", help="YAML file of settings (keys as in configs/reproduce_cpu.yaml)")
    c.add_argument(
        "--scale",
        choices=tuple(SCALES),
        default="cpu",
        help="built-in sizes when no --config: cpu (this machine) or gpu (the paper's sizes)",
    )
    add_model_options(p, multiple=True)
    d = p.add_argument_group("data options")
    d.add_argument(
        "--data",
        action=AppendAction,
        default=None,
        type=source,
        metavar="SOURCE",
        help=DATA_HELP + "; repeat for several",
    )
    p.set_defaults(model=None, dtype=None, device=None)  # None: the config's value
    g = p.add_argument_group("sampling options (replace the config's)")
    g.add_argument("--segments", type=checks.int_at_least(2), help="segments to sample")
    g.add_argument(
        "--segments-for",
        action="append",
        metavar="MODEL[@CORPUS]=N",
        help="segments for one model, or one model on one corpus (file stem or path); repeat",
    )
    g.add_argument("--seq-len", type=checks.int_at_least(2), help="tokens per segment")
    add_batch_option(g)
    p.set_defaults(batch_size=None)
    g.add_argument(
        "--mc",
        action="append",
        metavar="TASK=PATH[:LIMIT]",
        help="multiple-choice data (arc-challenge=DIR, mmlu=DIR); replaces the config's",
    )
    g.add_argument("--no-mc", action="store_true", help="skip the accuracy probe and hard slices")
    g.add_argument("--no-knn", action="store_true", help="skip the kNN key profile")
    add_output_options(
        p,
        "reproduce",
        required=True,
        cache=False,
        help="result folder for the grid and findings.md/.html; a rerun resumes it",
    )
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------ configuration


def _expand(value: Any, base: Path | None) -> Any:
    """${VARS} in data paths; REPDISP_SHARED_DATA defaults to ../shared/data next to the repo."""
    if isinstance(value, dict):
        return {k: _expand(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, base) for v in value]
    if not isinstance(value, str) or "$" not in value and not value.startswith("."):
        return value
    shared = os.environ.get("REPDISP_SHARED_DATA") or str(
        (base or Path.cwd()).resolve().parent / "shared" / "data"
    )
    text = value.replace("${REPDISP_SHARED_DATA}", shared).replace("$REPDISP_SHARED_DATA", shared)
    text = os.path.expandvars(text)
    if base is not None and text.startswith("."):
        text = str((base / text).resolve())
    return text


def load_config(args: argparse.Namespace) -> dict[str, Any]:
    cfg = json.loads(json.dumps(SCALES[args.scale]))
    base = None
    if args.config:
        import yaml

        path = Path(args.config)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise RepdispError(f"cannot read config {path}: {e}") from None
        if not isinstance(raw, dict):
            raise RepdispError(f"{path}: expected a mapping of settings")
        unknown = set(raw) - _KEYS - {"scale"}
        if unknown:
            raise RepdispError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
        if "scale" in raw:
            if raw["scale"] not in SCALES:
                raise RepdispError(f"{path}: scale must be one of {sorted(SCALES)}")
            cfg = json.loads(json.dumps(SCALES[raw["scale"]]))
        cfg.update({k: v for k, v in raw.items() if k != "scale"})
        base = path.resolve().parent.parent  # configs/ lives in the repository root
    for flag, key in (
        ("model", "models"),
        ("data", "data"),
        ("segments", "segments"),
        ("seq_len", "seq_len"),
        ("dtype", "dtype"),
        ("device", "device"),
        ("batch_size", "batch_size"),
    ):
        if getattr(args, flag) is not None:
            cfg[key] = getattr(args, flag)
    for item in args.segments_for or []:
        name, _, n = item.rpartition("=")
        if not name or not n.isdigit():
            raise RepdispError(f"--segments-for must be MODEL[@CORPUS]=N, got {item!r}")
        cfg["segments_for"] = (cfg.get("segments_for") or {}) | {name: int(n)}
    if args.mc:
        cfg["mc"] = [_parse_mc(m) for m in args.mc]
    if args.no_mc:
        cfg["mc"] = []
    if args.no_knn:
        cfg["knn"] = None
    cfg = _expand(cfg, base)
    for key in ("segments", "seq_len", "batch_size", "bin_size", "bins", "curve_bins"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise RepdispError(f"{key} must be a positive integer, got {cfg[key]!r}")
    if not cfg["models"] or not cfg["data"]:
        raise RepdispError("give at least one model and one corpus")
    return cfg


def _parse_mc(text: str) -> dict[str, Any]:
    task, sep, rest = text.partition("=")
    if not sep or task not in ("arc-challenge", "mmlu"):
        raise RepdispError(f"--mc must be arc-challenge=PATH or mmlu=PATH[:LIMIT], got {text!r}")
    path, _, limit = rest.rpartition(":") if rest.rsplit(":", 1)[-1].isdigit() else (rest, "", "")
    return {"task": task, "data": path, "limit": int(limit) if limit else None}


# ------------------------------------------------------------------------------ step bookkeeping


def _label(spec: str) -> str:
    return Path(spec.rstrip("/")).name.replace(":", "_") or spec


def _stem(data: str) -> str:
    return Path(data).stem.split(".")[0] if "/" in data or "." in data else data


class Steps:
    """Step markers: ``DIR/.done.json`` holds the parameters the finished step ran with."""

    def __init__(self, out: Path):
        self.out = out
        self.log: list[str] = []

    def done(
        self, folder: Path, name: str, params: dict[str, Any], needs: tuple[str, ...] = ()
    ) -> bool:
        """True when the marker matches ``params`` and the step's files (``needs``, default
        ``NAME.json``) are all there."""
        marker = folder / f".{name}.done.json"
        if not all((folder / f).exists() for f in needs or (f"{name}.json",)):
            return False
        try:
            return json.loads(marker.read_text()) == json.loads(json.dumps(params))
        except (OSError, ValueError):
            return False

    def finish(self, folder: Path, name: str, params: dict[str, Any]) -> None:
        marker = folder / f".{name}.done.json"
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(json.dumps(params, sort_keys=True))
        os.replace(tmp, marker)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.append(text)


def _n_available(lm: Any, data: str, docs: list[str], seq_len: int) -> int:
    from ..core.corpus import token_stream

    return len(token_stream(lm.tokenizer, docs)) // seq_len


def _write_result(
    folder: Path,
    name: str,
    result: Any,
    lm: Any = None,
    segs: Any = None,
    seed: int | None = None,
    **kw: Any,
) -> None:
    """A step's result as every command writes one (``io.results.write_result``: JSON with kind,
    provenance and run blocks, CSV tables, figure), with the model, data and seed recorded."""
    from ..io.results import record, write_result

    models = [lm] if lm is not None else []
    record(result, models=models, data=[segs] if segs is not None else [], seed=seed)
    write_result(folder, name, result, **kw)


# ------------------------------------------------------------------------------ the grid


def run(args: argparse.Namespace) -> int:
    from ..io.results import write_json

    cfg = load_config(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg)
    steps = Steps(out)
    t0 = time.perf_counter()
    progress = not args.quiet
    models: dict[str, Any] = {}

    def model(spec: str) -> Any:
        if spec not in models:
            ns = argparse.Namespace(
                model=spec,
                device=cfg["device"],
                model_args=getattr(args, "model_args", None),
                dtype=cfg["dtype"],
                trust_remote_code=False,
                allow_pickle=False,
            )
            models[spec] = model_from_args(ns)
        return models[spec]

    docs_cache: dict[str, list[str]] = {}

    def docs(data: str) -> list[str]:
        from ..core.corpus import load_texts

        if data not in docs_cache:
            docs_cache[data] = load_texts(data, "text")
        return docs_cache[data]

    for spec in cfg["models"]:
        for data in cfg["data"]:
            _grid_cell(cfg, out, steps, spec, data, model, docs, progress)
            _findings(cfg, out)
            if cfg.get("knn"):
                _knn_step(cfg, out, steps, spec, data, model, docs, progress)
                _findings(cfg, out)
    for spec in cfg["models"] if cfg.get("gap") else []:
        _gap_step(cfg, out, steps, spec)
        _findings(cfg, out)
    for spec in cfg["models"]:
        for mc in cfg.get("mc") or []:
            _mc_step(cfg, out, steps, spec, mc, model, progress)
            _findings(cfg, out)
    md, page = _findings(cfg, out, seconds=time.perf_counter() - t0)
    print(Path(md).read_text().split("## Commands")[0])
    print(f"wrote {md}, {page} ({time.perf_counter() - t0:.0f} s)")
    return 0


def _cell_params(cfg: dict[str, Any], spec: str, data: str) -> dict[str, Any]:
    n = _segments(cfg, spec, data)
    return {"segments": n, "seq_len": cfg["seq_len"], "seed": cfg["seed"]}


def _segments(cfg: dict[str, Any], spec: str, data: str | None = None) -> int:
    """N for a model on a corpus: ``segments_for`` MODEL@CORPUS (stem or path), then MODEL,
    then ``segments``."""
    table = cfg.get("segments_for") or {}
    keys = [f"{spec}@{data}", f"{spec}@{_stem(data)}"] if data else []
    for key in [*keys, spec]:
        if key in table:
            return int(table[key])
    return int(cfg["segments"])


_EXTRACTIONS: dict[tuple[str, str], Any] = {}


def _main_extraction(cfg, steps, spec, data, lm, docs, progress):
    """The one extraction of a cell (memoised in this process; the shard cache across runs)."""
    from ..core.sampling import Sampling

    key = (spec, data)
    if key not in _EXTRACTIONS:
        n_avail = _n_available(lm, data, docs(data), cfg["seq_len"])
        n = min(_segments(cfg, spec, data), n_avail)
        sampling = Sampling(
            segments=n,
            seq_len=cfg["seq_len"],
            seed=cfg["seed"],
            batch_size=cfg["batch_size"],
            skip_first=1,
            cache=True,
            progress=progress,
        )
        t = time.perf_counter()
        steps.say(
            f"[{_label(spec)} x {_stem(data)}] extraction: {n} of {n_avail} segments x "
            f"{cfg['seq_len']} tokens, every block + final ({cfg['dtype']})"
        )
        segs, ex = sampling.run(lm, data, "all,-1.attn,final", ["last", "within"], docs(data))
        steps.say(f"  extraction {time.perf_counter() - t:.0f} s")
        _EXTRACTIONS.clear()  # keep one cell's vectors in memory
        _EXTRACTIONS[key] = (segs, ex, n_avail)
    return _EXTRACTIONS[key]


def _grid_cell(cfg, out, steps, spec, data, model, docs, progress) -> None:
    from ..analyses import layers as layers_mod
    from ..analyses import ppl_dispersion as ppl_mod
    from ..core.sampling import Sampling

    folder = out / _label(spec) / _stem(data)
    base = {k: cfg[k] for k in ("dtype", "bin_size", "bins", "curve_bins")}
    base |= _cell_params(cfg, spec, data) | {"model": spec, "data": data}
    p_ppl = base | {
        "stats_reps": cfg["stats_reps"],
        "permutations": cfg["permutations"],
        "contexts": cfg["contexts"],
        "bootstrap": cfg["bootstrap"],
    }
    p_layers = base | {"stats_reps": cfg["layer_stats_reps"], "bootstrap": cfg["bootstrap"]}
    if steps.done(folder, "ppl_vs_dispersion", p_ppl) and steps.done(folder, "layers", p_layers):
        steps.say(f"[{_label(spec)} x {_stem(data)}] ppl-vs-dispersion, layers: done, skipped")
        return
    lm = model(spec)
    segs, ex, _ = _main_extraction(cfg, steps, spec, data, lm, docs, progress)
    common = {
        # Algorithm 1 needs K bins of B: with fewer than K*B segments, B shrinks to N // K
        "bin_size": max(2, min(cfg["bin_size"], len(segs) // cfg["bins"])),
        "n_bins": cfg["bins"],
        "bootstrap": cfg["bootstrap"],
        "seed": cfg["seed"],
        "curve_bins": cfg["curve_bins"],
    }
    if not steps.done(folder, "ppl_vs_dispersion", p_ppl):
        t = time.perf_counter()
        result = ppl_mod.PplDispersionResult("last", "final", 1, cfg["seed"])
        kw = common | {"stats_reps": cfg["stats_reps"], "permutations": cfg["permutations"]}
        result.series.append(
            ppl_mod.series_from_extraction(
                lm.name,
                data,
                len(segs),
                segs.has_bos,
                ex,
                site="final",
                pooling="last",
                last_token=False,
                seq_len=cfg["seq_len"],
                **kw,
            )  # fmt: skip
        )
        for ctx in cfg["contexts"]:
            if ctx == cfg["seq_len"]:
                c_segs, c_ex = segs, ex
            else:
                c_n = min(_segments(cfg, spec, data), _n_available(lm, data, docs(data), ctx))
                c_sampling = Sampling(
                    segments=c_n, seq_len=ctx, seed=cfg["seed"], batch_size=cfg["batch_size"],
                    skip_first=1, cache=True, progress=progress,
                )  # fmt: skip
                c_segs, c_ex = c_sampling.run(lm, data, "final", ["last", "within"], docs(data))
            result.series.append(
                ppl_mod.series_from_extraction(
                    lm.name,
                    data,
                    len(c_segs),
                    c_segs.has_bos,
                    c_ex,
                    site="final",
                    pooling="last",
                    last_token=True,
                    seq_len=ctx,
                    **kw,
                )  # fmt: skip
            )
        result.seconds = time.perf_counter() - t
        _write_result(folder, "ppl_vs_dispersion", result, lm, segs, cfg["seed"])
        steps.finish(folder, "ppl_vs_dispersion", p_ppl)
        steps.say(f"  ppl-vs-dispersion {result.seconds:.0f} s")
    if not steps.done(folder, "layers", p_layers):
        t = time.perf_counter()
        lres = layers_mod.layers_from_extraction(
            lm.name, data, len(segs), ex, seq_len=cfg["seq_len"], pooling="last", skip_first=1,
            sites=[x for x in ex.sites if not x.endswith(".attn")],
            stats_reps=cfg["layer_stats_reps"], permutations=cfg["layer_stats_reps"], **common,
        )  # fmt: skip
        lres.seconds = time.perf_counter() - t
        _write_result(folder, "layers", lres, lm, segs, cfg["seed"])
        steps.finish(folder, "layers", p_layers)
        steps.say(f"  layers {lres.seconds:.0f} s")


def _gap_step(cfg, out, steps, spec) -> None:
    from ..applications.gap import rank_by_gap

    folder = out / _label(spec)
    params = {"model": spec} | cfg["gap"]
    if steps.done(folder, "gap", params):
        return
    res = rank_by_gap(
        [spec], cfg["gap"]["domain"], reference=cfg["gap"].get("reference", "everyday")
    )
    _write_result(folder, "gap", res, figure=False)
    steps.finish(folder, "gap", params)
    steps.say(f"[{_label(spec)}] dispersion gap ({cfg['gap']['domain']}): done")


def _knn_step(cfg, out, steps, spec, data, model, docs, progress) -> None:
    """Table 1 from the main extraction's last-token vectors at the last block's sub-layers."""
    import numpy as np

    from ..applications.knnlm import KeyProfile, key_rows

    folder = out / _label(spec) / _stem(data)
    params = {"model": spec, "data": data, "dtype": cfg["dtype"]} | _cell_params(cfg, spec, data)
    params |= {"knn": cfg["knn"]}
    if steps.done(folder, "knn_keys", params):
        return
    t = time.perf_counter()
    lm = model(spec)
    segs, ex, n_avail = _main_extraction(cfg, steps, spec, data, lm, docs, progress)
    last = lm.n_blocks - 1
    names = [f"{last}.attn", f"{last}.ffn"]
    chunks = sorted({min(c, len(segs)) for c in cfg["knn"]["chunks"]})
    seeds = cfg["knn"]["seeds"]
    draws = [np.random.default_rng(s).permutation(len(segs)) for s in range(seeds)]
    rows, best = key_rows({site: ex.get(site, "last") for site in names}, draws, chunks)
    prof = KeyProfile(
        model=lm.name,
        data=data,
        chunk_len=cfg["seq_len"],
        n_windows=n_avail,
        seeds=seeds,
        chunks=chunks,
        sites=names,
        n_extracted=len(segs),
        recommended=best,
        rows=rows,
        seconds=time.perf_counter() - t,
    )
    _write_result(folder, "knn_keys", prof, lm, segs, cfg["seed"])
    steps.finish(folder, "knn_keys", params)
    steps.say(f"[{_label(spec)} x {_stem(data)}] kNN key profile: {best} is more dispersed")


def _mc_step(cfg, out, steps, spec, mc, model, progress) -> None:
    from ..applications.accuracy_probe import accuracy_probe, plot_probe
    from ..applications.hard_slices import hard_slices
    from ..applications.mcqa import MCResult, evaluate_task
    from ..io.results import GenericResult

    folder = out / _label(spec) / mc["task"]
    params = {"model": spec, "dtype": cfg["dtype"], "seed": cfg["seed"]} | mc
    p_all = params | cfg["probe"] | cfg["hard_slices"]
    if steps.done(folder, "mc", p_all, ("probe.json", "hard_slices.json")):
        return
    t = time.perf_counter()
    queries = folder / "queries.npz"
    if steps.done(folder, "queries", params, ("queries.npz",)):
        result = MCResult.load(queries)
    else:
        result = evaluate_task(
            model(spec), mc["task"], mc["data"], limit=mc.get("limit"), seed=cfg["seed"],
            batch_size=cfg["batch_size"], progress=progress,
        )  # fmt: skip
        result.save(queries)
        steps.finish(folder, "queries", params)
    probe = accuracy_probe(
        result,
        model=spec,
        task=mc["task"],
        sample=cfg["probe"]["sample"],
        seeds=cfg["probe"]["seeds"],
    )
    _write_result(folder, "probe", probe, seed=cfg["seed"], figure=plot_probe([probe]))
    hs = hard_slices(result, fraction=cfg["hard_slices"]["fraction"], correct_by="acc")
    wrong = ~result.correct
    lo, hi = _auroc_ci(hs.scores, wrong, seed=cfg["seed"])
    _write_result(
        folder,
        "hard_slices",
        GenericResult(
            {
                "model": spec,
                "task": mc["task"],
                "n_queries": len(result.items),
                "acc": result.acc,
                "n_slice": hs.n_slice,
                "fraction": hs.fraction,
                "auroc_wrong": hs.auroc,
                "auroc_ci": [lo, hi],
                "error_rate_slice": hs.error_rate_slice,
                "error_rate_all": hs.error_rate_all,
            }
        ),
        seed=cfg["seed"],
        tables=False,
        figure=False,
    )
    steps.finish(folder, "mc", p_all)
    steps.say(
        f"[{_label(spec)} x {mc['task']}] accuracy probe + hard slices "
        f"{time.perf_counter() - t:.0f} s (acc {result.acc:.3f})"
    )


def auroc(scores: Any, wrong: Any) -> float:
    """AUROC of -score as a detector of wrong answers (``hard_slices.auroc_wrong``); NaN when a
    resample holds only one class."""
    from ..applications.hard_slices import auroc_wrong

    try:
        return auroc_wrong(scores, wrong)
    except RepdispError:
        return float("nan")


def _auroc_ci(scores: Any, wrong: Any, reps: int = 1000, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(scores)
    vals = [auroc(scores[i], wrong[i]) for i in (rng.integers(0, n, n) for _ in range(reps))]
    vals = np.array([v for v in vals if np.isfinite(v)])
    if len(vals) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [0.025, 0.975])
    return float(lo), float(hi)


# ------------------------------------------------------------------------------ claims


def verdict(ci_low: float, ci_high: float, direction: int) -> str:
    """The stated rule: the CI excludes 0 on the paper's side / the other side / neither."""
    import numpy as np

    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "inconclusive (no CI)"
    side = 1 if ci_low > 0 else -1 if ci_high < 0 else 0
    if side == 0:
        return "inconclusive at this N"
    return "supported" if side == direction else "contradicted"


def _fmt(e: dict[str, Any], digits: int = 4) -> str:
    import numpy as np

    from ..core.permutation import format_p

    p, perms = e.get("p_perm"), e.get("perms", 0)
    if p is None or not np.isfinite(p):
        p, perms = e.get("p_value"), 0
    ptxt = format_p(p, perms) if p is not None else ""
    how = f" ({e['method'].split(' ', 1)[0]})" if e.get("method") else ""  # e.g. (BCa)
    ci = f"[{e['ci_low']:+.{digits}f}, {e['ci_high']:+.{digits}f}]"
    return f"{e['value']:+.{digits}f} {ci}{how}{', ' + ptxt if ptxt else ''}"


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cmd(cfg: dict[str, Any], spec: str, data: str | None = None, extra: str = "") -> str:
    parts = ["repdisp reproduce", f"--model {spec}"]
    if data:
        parts.append(f"--data {_quote(_public(data))}")
    parts += [f"--segments {_segments(cfg, spec, data)}", f"--seq-len {cfg['seq_len']}"]
    parts += [f"--dtype {cfg['dtype']}", "--out DIR"]
    return " ".join(parts) + (f" {extra}" if extra else "")


def _quote(text: str) -> str:
    """Shell-quote, but keep $REPDISP_SHARED_DATA expandable (double quotes)."""
    if text.startswith("$REPDISP_SHARED_DATA/"):
        return f'"{text}"' if any(c in text for c in " '\"`") else text
    return shlex.quote(text)


def _public(path: str) -> str:
    """A data path as the page shows it: under $REPDISP_SHARED_DATA when it is there."""
    shared = os.environ.get("REPDISP_SHARED_DATA")
    if shared and path.startswith(shared.rstrip("/") + "/"):
        return "$REPDISP_SHARED_DATA/" + path[len(shared.rstrip("/")) + 1 :]
    return path


def claims(cfg: dict[str, Any], out: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Claim rows from the step results on disk (finished steps only) and the missing steps."""
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    for spec in cfg["models"]:
        for data in cfg["data"]:
            folder = out / _label(spec) / _stem(data)
            scope = f"{_label(spec)} · {_stem(data)}"
            ppl = _read(folder / "ppl_vs_dispersion.json")
            if ppl is None:
                missing.append(f"{scope}: ppl-vs-dispersion")
            else:
                rows += _ppl_claims(cfg, spec, data, scope, ppl)
            lay = _read(folder / "layers.json")
            if lay is None:
                missing.append(f"{scope}: layers")
            else:
                rows.append(_layer_claim(cfg, spec, data, scope, lay))
            if cfg.get("knn"):
                knn = _read(folder / "knn_keys.json")
                if knn is None:
                    missing.append(f"{scope}: kNN key profile")
                else:
                    rows.append(_knn_claim(cfg, spec, data, scope, knn))
        for mc in cfg.get("mc") or []:
            folder = out / _label(spec) / mc["task"]
            probe, hs = _read(folder / "probe.json"), _read(folder / "hard_slices.json")
            if probe is None or hs is None:
                missing.append(f"{_label(spec)} · {mc['task']}: accuracy probe, hard slices")
            else:
                rows += _mc_claims(cfg, spec, mc, probe, hs)
    gaps = [(spec, _read(out / _label(spec) / "gap.json")) for spec in cfg["models"]]
    gaps = gaps if cfg.get("gap") else []
    have = [(s, g) for s, g in gaps if g]
    if have:
        vals = "; ".join(
            f"{_label(s)} G={g['checkpoints'][0]['cosine']['gap']:.4f}" for s, g in have
        )
        rows.append(
            {
                "claim": "§3.2 a larger dispersion gap G (domain vs everyday tokens) goes with "
                "higher accuracy on the domain, across checkpoints",
                "scope": f"{len(have)} model(s), domain {cfg['gap']['domain']}",
                "paper": "positive rank correlation of G with accuracy across checkpoints",
                "result": vals,
                "verdict": "inconclusive (needs 3+ checkpoints sharing a tokenizer, "
                "with accuracies)",
                "command": "repdisp gap --model M1 --model M2 --model M3 --domain python "
                "--accuracy M1=ACC,M2=ACC,M3=ACC",
            }
        )
    return rows, missing


def _p_of(e: dict[str, Any]) -> float | None:
    """The estimate's permutation p-value, else its analytic one, else None."""
    for key in ("p_perm", "p_value"):
        p = e.get(key)
        if p is not None and math.isfinite(p):
            return float(p)
    return None


def _n_to_decide(n: int, e: dict[str, Any]) -> int | None:
    """Segments at which this slope's CI would exclude 0 if the estimate held (``core.stats``);
    None when it already does or cannot."""
    from ..core.stats import n_to_decide

    if e["ci_low"] > 0 or e["ci_high"] < 0:
        return None
    m = n_to_decide(n, e["value"], e["ci_low"], e["ci_high"])
    return math.ceil(m) if math.isfinite(m) else None


def _ppl_claims(cfg, spec, data, scope, ppl) -> list[dict[str, Any]]:
    rows = []
    for s in ppl["series"]:
        st = s.get("stats") or {}
        if not st:
            continue
        n = s["n_segments"]
        last = s["perplexity"] == "last-token"
        fig = "Fig. 4 (last-token)" if last else "Fig. 3 (sequence)"
        a, w = st["across"], st["within"]
        rows.append(
            {
                "claim": f"§2.2(1) {fig}: higher perplexity, lower dispersion across segments "
                f"(final layer, last-token vectors{', ctx ' + str(s['seq_len']) if last else ''})",
                "scope": f"{scope}, N={n}",
                "paper": "strong negative correlation (bin r < 0)",
                "result": f"slope per doubling {_fmt(a['slope'])} over {a['curve_bins']} bins; "
                f"K={s['n_bins']} Algorithm-1 bins r={_fmt(a['pearson'], 3)} (segments "
                "resampled and re-binned)",
                "verdict": verdict(a["slope"]["ci_low"], a["slope"]["ci_high"], -1),
                "n_to_decide": _n_to_decide(n, a["slope"]),
                "p": _p_of(a["slope"]),
                "command": _cmd(cfg, spec, data, "--no-knn --no-mc"),
            }
        )
        if not last:
            rows.append(
                {
                    "claim": "§2.2(1) within segments: higher perplexity, lower token-level "
                    "dispersion (the authors' code)",
                    "scope": f"{scope}, N={n}",
                    "paper": "negative correlation",
                    "result": f"slope per doubling {_fmt(w['slope'])}; Spearman over segments "
                    f"{_fmt(w['spearman'], 3)}",
                    "verdict": verdict(w["slope"]["ci_low"], w["slope"]["ci_high"], -1),
                    "n_to_decide": _n_to_decide(n, w["slope"]),
                    "p": _p_of(w["slope"]),
                    "command": _cmd(cfg, spec, data, "--no-knn --no-mc"),
                }
            )
    for r in rows:
        if r["n_to_decide"]:
            r["result"] += f"; N ≈ {r['n_to_decide']:,} would decide if the slope held"
    return rows


def _layer_claim(cfg, spec, data, scope, lay) -> dict[str, Any]:
    blocks = [x for x in lay["layers"] if x["site"].endswith(".ffn") and x.get("stats")]
    second = blocks[len(blocks) // 2 :]
    neg = sum(x["stats"]["across"]["slope"]["ci_high"] < 0 for x in second)
    pos = sum(x["stats"]["across"]["slope"]["ci_low"] > 0 for x in second)
    m = len(second)
    if m and neg > m / 2 and pos == 0:
        v = "supported"
    elif m and pos > m / 2 and neg == 0:
        v = "contradicted"
    else:
        v = "inconclusive at this N"
    wneg = sum(x["stats"]["within"]["slope"]["ci_high"] < 0 for x in second)
    wpos = sum(x["stats"]["within"]["slope"]["ci_low"] > 0 for x in second)
    return {
        "claim": "§2.2(2) Fig. 5: the negative relation holds in the deeper layers (across "
        "segments, slope per doubling at every block output)",
        "scope": f"{scope}, N={lay['n_segments']}, second half = blocks "
        f"{len(blocks) - m}..{len(blocks) - 1} of 0..{len(blocks) - 1}",
        "paper": "negative in the later layers",
        "result": f"across: {neg}/{m} second-half blocks CI<0, {pos} CI>0; within: {wneg}/{m} "
        f"CI<0, {wpos} CI>0",
        "verdict": v,
        "command": _cmd(cfg, spec, data, "--no-knn --no-mc"),
    }


def _knn_claim(cfg, spec, data, scope, knn) -> dict[str, Any]:
    import numpy as np
    from scipy import stats as sps

    n = max(knn["chunks"])
    rows = {r["site"]: r for r in knn["rows"] if r["n_chunks"] == n}
    att = next(r for s, r in rows.items() if s.endswith(".attn"))
    ffn = next(r for s, r in rows.items() if s.endswith(".ffn"))
    diff = np.array(att["values"]) - np.array(ffn["values"])  # same chunks per seed: paired
    mean = float(diff.mean())
    if len(diff) > 1:
        half = float(sps.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)))
        p = float(sps.ttest_1samp(diff, 0.0).pvalue) if diff.std() > 0 else None
    else:
        half, p = float("nan"), None
    return {
        "claim": "§3.3 Table 1: the last block's attention sub-layer output (h_att) is more "
        "dispersed than its FFN output (h_ffn), so it is the kNN-LM key",
        "scope": f"{scope}, N={n} chunks of {knn['chunk_len']}, {knn['seeds']} seeds",
        "paper": "h_att more dispersed (and the better key)",
        "result": f"D(h_att)-D(h_ffn) = {mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}] "
        f"(t-interval over seeds); recommended key {knn['recommended']}",
        "verdict": verdict(mean - half, mean + half, 1),
        "p": p,
        "command": _cmd(cfg, spec, data, "--no-mc"),
    }


def _mc_claims(cfg, spec, mc, probe, hs) -> list[dict[str, Any]]:
    chance = 0.25
    weak = abs(probe["acc"] - chance) < 0.1
    note = f" acc {probe['acc']:.3f} (chance {chance:.2f})" + (
        ": near chance, the probe is uninformative" if weak else ""
    )
    sp = probe.get("spearman_means")
    rows = []
    limit = f" --limit {mc['limit']}" if mc.get("limit") else ""
    common = (
        f"--model {spec} --task {mc['task']} --data {_quote(_public(mc['data']))}{limit} --out DIR"
    )
    cmd = (
        f"repdisp accuracy-probe {common} --sample {cfg['probe']['sample']} "
        f"--num-seeds {cfg['probe']['seeds']}"
    )
    hs_cmd = f"repdisp hard-slices {common} --fraction {cfg['hard_slices']['fraction']}"
    if sp:
        v = verdict(sp["ci_low"], sp["ci_high"], 1)
        rows.append(
            {
                "claim": "§3.1 more questions answered correctly, higher dispersion of the "
                "query embeddings (controlled mixtures)",
                "scope": f"{_label(spec)} · {mc['task']}, pool {probe['n_pool']}",
                "paper": "positive correlation",
                "result": f"Spearman over {len(probe['levels'])} level means {sp['r']:+.3f} "
                f"[{sp['ci_low']:+.3f}, {sp['ci_high']:+.3f}];{note}",
                "verdict": v + (" (model too weak to test)" if weak else ""),
                "command": cmd,
            }
        )
    a, (lo, hi) = hs.get("auroc_wrong"), hs.get("auroc_ci", [float("nan")] * 2)
    if a is not None:
        rows.append(
            {
                "claim": "§3.1 hard slices: the lowest-dispersion queries are more often wrong",
                "scope": f"{_label(spec)} · {mc['task']}, {hs['n_queries']} queries",
                "paper": "AUROC(low score -> wrong) > 0.5",
                "result": f"AUROC {a:.3f} [{lo:.3f}, {hi:.3f}]; error rate slice "
                f"{hs['error_rate_slice']:.3f} vs all {hs['error_rate_all']:.3f};{note}",
                "verdict": verdict(lo - 0.5, hi - 0.5, 1) + (" (model too weak)" if weak else ""),
                "command": hs_cmd,
            }
        )
    return rows


def _findings(cfg: dict[str, Any], out: Path, seconds: float | None = None):
    from ..io.findings import write_findings
    from ..io.results import write_csv, write_json

    rows, missing = claims(cfg, out)
    models = ", ".join(_label(m) for m in cfg["models"])
    corpora = ", ".join(_stem(d) for d in cfg["data"])

    def size(m: str, d: str) -> str:
        done = _read(out / _label(m) / _stem(d) / "ppl_vs_dispersion.json")
        if done and done.get("series"):
            return f"{done['series'][0]['n_segments']} ({_label(m)} · {_stem(d)})"
        return f"up to {_segments(cfg, m, d)} ({_label(m)} · {_stem(d)}, not run yet)"

    sizes = ", ".join(size(m, d) for m in cfg["models"] for d in cfg["data"])
    intro = [
        f"Models: {models}. Corpora: {corpora}. Segments of {cfg['seq_len']} tokens per model "
        f"and corpus, N = {sizes} (asked for {cfg['segments']}; a corpus with fewer windows "
        f"gives all of them), dtype {cfg['dtype']}, seed {cfg['seed']}.",
        "Statistics: across-segment CIs resample segments and re-bin with Algorithm 1 in every "
        f"replicate ({cfg['stats_reps']} replicates; {cfg['layer_stats_reps']} for the "
        f"layer-wise rows); p-values are permutation tests ({cfg['permutations']} shuffles of "
        "perplexity over segments). The effect size is the change in dispersion per doubling "
        f"of perplexity, the OLS slope on log2 perplexity over {cfg['curve_bins']} equal-count "
        "bins (across) or over segments (within).",
        VERDICT_RULE,
    ]
    with_p = [r for r in rows if r.get("p") is not None]
    if with_p:
        from scipy.stats import false_discovery_control

        q = false_discovery_control([r["p"] for r in with_p], method="bh")
        for r, qv in zip(with_p, q, strict=True):
            r["q_bh"] = float(qv)
        k = sum(qv < 0.05 for qv in q)
        intro.append(
            f"Multiple comparisons: {len(with_p)} rows carry a p-value (the slope's permutation "
            "test; the paired t-test over seeds for the kNN rows); "
            f"{k} of them keep q < 0.05 after Benjamini-Hochberg over this page "
            "(`q_bh` in claims.csv/json). The verdicts themselves follow the rule above, "
            "row by row."
        )
    sections = []
    if missing:
        sections.append(("Not finished yet", "\n".join(f"- {m}" for m in missing)))
    if seconds is not None:
        intro.append(f"Wall time of this invocation: {seconds:.0f} s.")
    write_csv(out / "claims.csv", rows) if rows else None
    write_json(out / "claims.json", {"rule": VERDICT_RULE, "claims": rows, "missing": missing})
    return write_findings(
        out, "repdisp reproduce: findings", intro, rows, sections, _figures(cfg, out)
    )


_FIGURES = (
    ("ppl_vs_dispersion.png", "perplexity vs dispersion (Algorithm 1 bins, 50-bin curve)"),
    ("layers.png", "layer-wise: correlation and slope per block"),
    ("knn_keys.png", "kNN key profile: h_att vs h_ffn of the last block"),
)


def _figures(cfg: dict[str, Any], out: Path) -> list[tuple[str, str]]:
    """(caption, path relative to the page) of every finished step's figure, grid order."""
    found = []
    for spec in cfg["models"]:
        for data in cfg["data"]:
            rel = Path(_label(spec)) / _stem(data)
            for name, what in _FIGURES:
                if (out / rel / name).exists():
                    found.append((f"{_label(spec)} · {_stem(data)}: {what}", f"{rel / name}"))
    return found
