"""The grid's settings: built-in scales, loading a YAML file over them, and what they imply.

Contract: ``load_config`` returns a plain, JSON-serialisable dict whose keys are exactly those of
``SCALES["cpu"]`` (``_KEYS``). Precedence, lowest first: the scale's defaults (``scale``, or the
file's own ``scale:`` key), the file's keys, then the explicit overrides. ``${REPDISP_SHARED_DATA}``
(default ``../shared/data`` beside the repository) and other environment variables are expanded
in every string, and paths starting with ``.`` are resolved against the repository root (the
parent of the config file's folder). Bad input raises a one-line ``RepdispError``.

A new claim's settings are one new key in ``_COMMON`` (or per scale in ``SCALES``), with the same
key in ``configs/reproduce_*.yaml``; a step or claim registered with ``when=KEY`` runs only when
the key is truthy (``null`` in a file turns it off).

Corpora per step: the blocks in ``CELL_BLOCKS`` may carry ``data: [CORPUS, ...]`` (a corpus's
path or stem, ``stem``); their step and rows then run on those corpora only (``on_cell``).
Every name must be a corpus of the run; ``--data`` on the command line clears the lists (the
run's corpora are then the user's, all of them).

Also here: where a model's and a corpus's results go (``label``, ``stem``), the N of a model on a
corpus (``segments``: ``segments_for`` MODEL@CORPUS, then MODEL, then ``segments``) and the
parameters that identify a grid cell's extraction (``cell_params``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError

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
    # App. B.3 Fig. 31: per-segment link of perplexity with within-segment dispersion at the last
    # block's attention and FFN outputs (main extraction; paired bootstrap over segments)
    "sublayers": {"reps": 1000},
    # §2.2(2) end: the same architecture, randomly initialised (seeded), through the layer-wise
    # analysis on the same segments
    "random_init": {"seed": 0},
    # Fig. 4's last-token lengths other than seq_len: one final-site pass each, on the corpora in
    # ``data`` (null: every corpus) with at most ``segments`` segments (null: the cell's N)
    "context_passes": {"data": None, "segments": None},
    # Fig. 6 (reproduce.finetune_shift): LoRA and full fine-tunes, off unless a config file
    # gives the block (configs/reproduce_*.yaml; hours of training at the GPU scale)
    "finetune": None,
    # Fig. 7 (reproduce.scratch_clusters): checkpoints of one from-scratch training run, n-gram
    # clusters of held-out contexts; off unless a config file gives the block
    "fig7": None,
    # Fig. 8 on next-word cloze (reproduce.cloze), off unless a config file gives the block
    "cloze": None,
    "only": None,  # claim ids (--only): run only the steps those rows need, show only them
}
_WIKI = {
    "name": "wikitext",
    "train": f"{_SHARED}/wikitext-2-raw/wiki.test.raw",
    "val_fraction": 0.05,
    "test_fraction": 0.10,
}
_CODE = {  # CPython's stdlib sources (train/val), HumanEval (test)
    "name": "code",
    "train": "python-code",
    "val_fraction": 0.05,
    "max_chars": 1200000,
    "test": f"{_SHARED}/humaneval/HumanEval.jsonl.gz",
    "test_field": "prompt+canonical_solution",
}


def _pushaway(recipes: tuple[str, str], seeds: list[int], save_every: int, **sizes: Any) -> dict:
    """Table 2's block (``reproduce.pushaway``): (single, cross) recipes with these sizes."""
    return {
        "seeds": seeds,
        "save_every": save_every,
        "single": {"recipe": recipes[0], "domains": [_WIKI]} | sizes,
        "cross": {"recipe": recipes[1], "domains": [_WIKI, _CODE]} | sizes,
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
        "contexts": [16, 64, 128, 256],
        "mc": [{"task": "arc-challenge", "data": f"{_SHARED}/arc", "limit": 200}],
        "probe": {"sample": 50, "seeds": 10},
        # §3.3 kNN-LM perplexity per candidate key: a datastore of the corpus's first tokens,
        # evaluated on the next ones (disjoint); CI over held-out segments of segment_tokens
        "knnlm": {
            "datastore_tokens": 50000,
            "eval_tokens": 8192,
            "context": 256,
            "stride": 128,
            "k": 64,
            "lmbda_grid": [0.1, 0.25, 0.5],
            "temperature_grid": [1.0],
            "segment_tokens": 256,
            "reps": 2000,
            "batch_size": 4,
        },
        "pushaway": _pushaway(
            ("./configs/train_cpu.yaml", "./configs/train_cpu_cross.yaml"),
            [0, 1, 2],
            25,
            max_steps=100,
            eval_steps=[50, 100],
            aux_weights=[0.1, 1.0],
            lrs=[3.0e-3],
        ),
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
        "knnlm": {
            "datastore_tokens": 10_000_000,
            "eval_tokens": 250_000,
            "context": 512,
            "stride": 256,
            "k": 1024,
            "lmbda_grid": [0.1, 0.25, 0.5],
            "temperature_grid": [1.0, 5.0, 10.0],
            "segment_tokens": 512,
            "reps": 2000,
            "batch_size": 8,
        },
        "pushaway": _pushaway(
            ("./configs/train_paper.yaml", "./configs/train_paper.yaml"),
            [0, 1, 2],
            100,
            max_steps=1000,
            eval_steps=[500, 1000],
            aux_weights=[0.01, 0.05, 0.1, 0.5, 1.0],
            lrs=[1.0e-3, 7.0e-4, 5.0e-4],
        ),
    },
}
_KEYS = set(SCALES["cpu"])
CELL_BLOCKS = ("random_init", "knnlm", "context_passes")  # blocks whose ``data`` limits cells
OVERRIDABLE = ("models", "data", "segments", "seq_len", "dtype", "device", "batch_size")


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


def load_config(
    scale: str = "cpu",
    path: str | Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    segments_for: Iterable[str] = (),
    mc: Iterable[str] | None = None,
    no_mc: bool = False,
    no_knn: bool = False,
    only: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The settings of one grid run.

    ``overrides``: values for the keys in ``OVERRIDABLE`` (given keys replace the file's);
    ``segments_for``: ``MODEL[@CORPUS]=N`` items added to the file's table; ``mc``:
    ``TASK=PATH[:LIMIT]`` items replacing the file's tasks; ``no_mc`` / ``no_knn`` turn those
    steps off (``no_knn``: Table 1's profile and the kNN-LM perplexity); ``only``: claim ids (items may be comma lists), replacing the file's ``only``."""
    if scale not in SCALES:
        raise RepdispError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    cfg = json.loads(json.dumps(SCALES[scale]))
    base = None
    if path:
        import yaml

        path = Path(path)
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
    for key, value in (overrides or {}).items():
        if key not in OVERRIDABLE:
            raise RepdispError(f"cannot override {key!r}; overridable: {', '.join(OVERRIDABLE)}")
        cfg[key] = value
    if "data" in (overrides or {}):  # the user's corpora: every block runs on all of them
        for key in CELL_BLOCKS:
            if isinstance(cfg.get(key), dict):
                cfg[key] = cfg[key] | {"data": None}
    for item in segments_for:
        name, _, n = item.rpartition("=")
        if not name or not n.isdigit():
            raise RepdispError(f"--segments-for must be MODEL[@CORPUS]=N, got {item!r}")
        cfg["segments_for"] = (cfg.get("segments_for") or {}) | {name: int(n)}
    if mc:
        cfg["mc"] = [parse_mc(m) for m in mc]
    if no_mc:
        cfg["mc"] = []
    if no_knn:
        cfg["knn"] = cfg["knnlm"] = None
    if only:
        cfg["only"] = [i.strip() for item in only for i in item.split(",") if i.strip()]
    if isinstance(cfg.get("only"), str):
        cfg["only"] = [i.strip() for i in cfg["only"].split(",") if i.strip()]
    cfg = _expand(cfg, base)
    for key in ("segments", "seq_len", "batch_size", "bin_size", "bins", "curve_bins"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise RepdispError(f"{key} must be a positive integer, got {cfg[key]!r}")
    if not cfg["models"] or not cfg["data"]:
        raise RepdispError("give at least one model and one corpus")
    _check_cells(cfg)
    from .gap_checkpoints import check_block  # §3.2 checkpoints: files exist, keys known

    check_block(cfg.get("gap"), data_files=False)
    return cfg


def _check_cells(cfg: dict[str, Any]) -> None:
    """Each ``CELL_BLOCKS`` block's ``data`` names corpora of the run (one-line error if not)."""
    known = {n for d in cfg["data"] for n in (d, stem(d))}
    for key in CELL_BLOCKS:
        block = cfg.get(key)
        if block is not None and not isinstance(block, dict):
            raise RepdispError(f"{key}: expected a mapping of settings or null, got {block!r}")
        names = (block or {}).get("data")
        if names is None:
            continue
        if isinstance(names, str):
            names = block["data"] = [names]
        bad = [n for n in names if n not in known]
        if bad or not names:
            raise RepdispError(
                f"{key}.data: {', '.join(map(str, bad)) or 'empty list'} is not a corpus of "
                f"this run; known: {', '.join(sorted(stem(d) for d in cfg['data']))} (or null: all)"
            )
    n = (cfg.get("context_passes") or {}).get("segments")
    if n is not None and (not isinstance(n, int) or n < 2):
        raise RepdispError(f"context_passes.segments must be an integer >= 2 or null, got {n!r}")


def on_cell(cfg: dict[str, Any], key: str | None, data: str) -> bool:
    """Whether the block ``cfg[key]``'s step runs on corpus ``data`` (its ``data`` list)."""
    block = cfg.get(key) if key else None
    names = block.get("data") if isinstance(block, dict) else None
    return not names or data in names or stem(data) in names


def parse_mc(text: str) -> dict[str, Any]:
    """``arc-challenge=PATH`` / ``mmlu=PATH:LIMIT`` -> {"task", "data", "limit"}."""
    task, sep, rest = text.partition("=")
    if not sep or task not in ("arc-challenge", "mmlu"):
        raise RepdispError(f"--mc must be arc-challenge=PATH or mmlu=PATH[:LIMIT], got {text!r}")
    path, _, limit = rest.rpartition(":") if rest.rsplit(":", 1)[-1].isdigit() else (rest, "", "")
    return {"task": task, "data": path, "limit": int(limit) if limit else None}


def label(spec: str) -> str:
    """A model's folder name under the run folder (the last part of its spec)."""
    return Path(spec.rstrip("/")).name.replace(":", "_") or spec


def stem(data: str) -> str:
    """A corpus's folder name under its model's folder (file stem, or the bundled name)."""
    return Path(data).stem.split(".")[0] if "/" in data or "." in data else data


def segments(cfg: dict[str, Any], spec: str, data: str | None = None) -> int:
    """N for a model on a corpus: ``segments_for`` MODEL@CORPUS (stem or path), then MODEL,
    then ``segments``."""
    table = cfg.get("segments_for") or {}
    keys = [f"{spec}@{data}", f"{spec}@{stem(data)}"] if data else []
    for key in [*keys, spec]:
        if key in table:
            return int(table[key])
    return int(cfg["segments"])


def cell_params(cfg: dict[str, Any], spec: str, data: str) -> dict[str, Any]:
    """What identifies a cell's segments (part of every cell step's marker)."""
    n = segments(cfg, spec, data)
    return {"segments": n, "seq_len": cfg["seq_len"], "seed": cfg["seed"]}


def block_over(cfg: dict[str, Any], name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """A step's config block ``cfg[name]`` read over its ``defaults`` (a new dict); not a
    mapping or an unknown key is a one-line ``RepdispError``."""
    given = cfg.get(name) or {}
    if not isinstance(given, dict):
        raise RepdispError(f"{name}: expected a mapping of settings, got {given!r}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise RepdispError(f"{name}: unknown key(s) {unknown}; known: {sorted(defaults)}")
    return defaults | given
