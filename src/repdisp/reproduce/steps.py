"""Steps of the grid: the registry, the run context they share, and their resume markers.

A step computes one or more results and writes them into its folder (``io.results``: JSON with
kind, provenance and run blocks, CSV tables, figure), then a marker ``FOLDER/.NAME.done.json``
holding the parameters it ran with (and its wall time into ``out/step_seconds.json``: the time
since the step started or since its previous ``finish``, so a step that finishes sub-steps
(``cloze_queries`` then ``cloze``, one fine-tuned model after another) counts each second once;
the first step of a cell includes the cell's extraction; beside it ``out/floor_seconds.json``
holds, under the same key, its floor: the plain forwards of the passes the step ran and the
plain optimiser steps of its training, ``memo`` and ``training.floor``). On rerun a step whose
marker equals its parameters (after a JSON round trip) and whose files all exist is skipped; a
step killed before its marker reruns.

Registry: ``@step(over=..., when=...)`` appends the function to ``STEPS`` in definition order
(the family modules are imported in a fixed order by the package). ``over`` says what it runs
for, and so its signature:

    "cell"   fn(run, spec, data)   each model x corpus        folder  out/LABEL/STEM
    "model"  fn(run, spec)         each model                 folder  out/LABEL
    "task"   fn(run, spec, mc)     each model x mc task       folder  out/LABEL/TASK
    "grid"   fn(run)               once, after every task      its own folder under out

``when``: a config key; the step runs only when ``cfg[when]`` is truthy (None: always).
The driver (``grid.run``) runs, model by model, its cells' steps, its model steps and its
tasks' steps, releasing the model after its last (``Run.release``); then the grid's steps.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import label, stem

OVERS = ("cell", "model", "task", "grid")


@dataclass(frozen=True)
class Step:
    name: str
    over: str
    fn: Callable[..., None]
    when: str | None = None

    def enabled(self, cfg: dict[str, Any]) -> bool:
        return self.when is None or bool(cfg.get(self.when))


STEPS: list[Step] = []


def step(over: str, when: str | None = None) -> Callable[[Callable[..., None]], Callable]:
    """Register a step function (see the module docstring for ``over`` and ``when``)."""
    if over not in OVERS:
        raise ValueError(f"over must be one of {OVERS}, got {over!r}")

    def add(fn: Callable[..., None]) -> Callable[..., None]:
        STEPS.append(Step(fn.__name__, over, fn, when))
        return fn

    return add


class Steps:
    """Step markers: ``DIR/.NAME.done.json`` holds the parameters the finished step ran with."""

    def __init__(self, out: Path):
        self.out = out
        self.log: list[str] = []
        self.started = time.perf_counter()  # the driver resets it before each step
        self.floor = 0.0  # plain-forward seconds of the passes this step ran (memo.plain_forward)

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
        self.timed(folder, name, time.perf_counter() - self.started)

    def timed(self, folder: Path, name: str, seconds: float) -> None:
        """Record a finished step's wall time in ``out/step_seconds.json`` (``PART/NAME``:
        seconds, the latest run that computed it; the page lists them)."""
        path = self.out / "step_seconds.json"
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            table = {}
        try:
            where = folder.relative_to(self.out).as_posix()
        except ValueError:
            where = folder.as_posix()
        table[f"{where}/{name}"] = round(seconds, 1)
        _write(path, table)
        floor_path = self.out / "floor_seconds.json"  # the same keys: the step's plain forwards
        try:
            floors = json.loads(floor_path.read_text())
        except (OSError, ValueError):
            floors = {}
        floors[f"{where}/{name}"] = round(self.floor, 4)
        self.floor = 0.0
        _write(floor_path, floors)
        self.started = time.perf_counter()  # a second finish in one step counts from here

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.append(text)


def _write(path: Path, table: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1))
    os.replace(tmp, path)


@dataclass
class Run:
    """What every step gets: the settings, the run folder, the markers, and loaders that keep
    each model and each corpus's texts once per process.

    ``load(spec)`` loads a model (``grid.run`` passes ``core.models.load_model`` with the run's
    device, dtype and loader options)."""

    cfg: dict[str, Any]
    out: Path
    load: Callable[[str], Any]
    progress: bool = True
    steps: Steps = field(init=False)
    _models: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _docs: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.steps = Steps(self.out)

    def model(self, spec: str) -> Any:
        if spec not in self._models:
            self._models[spec] = self.load(spec)
        return self._models[spec]

    def release(self, spec: str) -> None:
        """Forget the loaded model ``spec`` (its next ``model(spec)`` loads it again) and
        return its memory: garbage-collected, and CUDA's cached blocks freed."""
        import gc
        import sys

        self._models.pop(spec, None)
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def docs(self, data: str) -> list[str]:
        from ..core.corpus import load_texts

        if data not in self._docs:
            self._docs[data] = load_texts(data, "text")
        return self._docs[data]

    def folder(self, spec: str, part: str | None = None) -> Path:
        """out/LABEL, or out/LABEL/PART (a corpus's stem or a task name)."""
        return self.out / label(spec) / part if part else self.out / label(spec)

    def cell(self, spec: str, data: str) -> Path:
        return self.folder(spec, stem(data))

    def say(self, text: str) -> None:
        self.steps.say(text)


def write_result(
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
    from ..io.results import record
    from ..io.results import write_result as write

    models = [lm] if lm is not None else []
    record(result, models=models, data=[segs] if segs is not None else [], seed=seed)
    write(folder, name, result, **kw)
