"""Resumable training jobs: a work folder of ``transformers.Trainer`` checkpoints tied to one job.

A job (``finetune``, ``train``) describes itself by a JSON-able ``spec`` (every setting that
changes the result, the model and data identities). Its work folder holds ``job.json`` (that
spec) and the Trainer's ``checkpoint-STEP`` folders, saved every ``--save-every`` steps. Running
the same command again, after a crash or ``kill -9``, finds the folder, checks that ``job.json``
equals the new spec, and resumes from the last *complete* checkpoint: one whose
``trainer_state.json`` (the last file the Trainer writes) parses and names its own step. The
Trainer restores weights, optimiser, scheduler, RNG states and the data position, so with
deterministic settings the final weights equal those of an uninterrupted run. Work of a
different job in the same place is discarded with a note (never silently reused); the finished
job removes its work folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..core.errors import RepdispError
from ..core.shards import note_finished

JOB_FILE = "job.json"


def _step(path: Path) -> int | None:
    tail = path.name.removeprefix("checkpoint-")
    return int(tail) if path.name.startswith("checkpoint-") and tail.isdigit() else None


def start_step(resume: Path | None) -> int:
    """The optimiser step a run resuming from ``resume`` starts at (0: a fresh run)."""
    return (_step(resume) or 0) if resume is not None else 0


def last_checkpoint(work: Path, prune: bool = True) -> Path | None:
    """The highest-step complete checkpoint in ``work``; incomplete ones (a save cut short) are
    removed (``prune``) so the Trainer never sees them."""
    found = sorted((s, p) for p in work.glob("checkpoint-*") if (s := _step(p)) is not None)
    for step, path in reversed(found):
        try:
            state = json.loads((path / "trainer_state.json").read_text())
            if state.get("global_step") == step:
                return path
        except (OSError, ValueError, AttributeError):
            pass
        if prune:
            shutil.rmtree(path, ignore_errors=True)
    return None


def open_work(work: Path, spec: dict[str, Any], quiet: bool = False) -> Path | None:
    """Make ``work`` the work folder of the job ``spec``; return the checkpoint to resume from,
    or None to start fresh."""
    spec = json.loads(json.dumps(spec))  # compare as stored
    if work.exists():
        try:
            old = json.loads((work / JOB_FILE).read_text())
        except (OSError, ValueError):
            old = None
        if old != spec:
            if not quiet and any(work.glob("checkpoint-*")):
                print(
                    f"repdisp: note: {work} holds checkpoints of a job with other settings; "
                    "starting over",
                    file=sys.stderr,
                )
            shutil.rmtree(work)
    try:
        work.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=work, prefix=".job-")
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f, indent=1, sort_keys=True)
        os.replace(tmp, work / JOB_FILE)
    except OSError as e:
        raise RepdispError(f"cannot write the work folder {work}: {e.strerror or e}") from None
    return last_checkpoint(work)


def check_save_every(save_every: int) -> None:
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 0:
        raise RepdispError(
            f"--save-every must be an integer >= 0 (0 = no checkpoints), got {save_every!r}"
        )


def wait_for_work(work: Path, spec: dict[str, Any], timeout: float = 300.0) -> Path | None:
    """For the other processes of a multi-process job: wait until process 0 has made ``work``
    the folder of this job (``open_work``), then return the same checkpoint it resumes from."""
    import time

    spec = json.loads(json.dumps(spec))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((work / JOB_FILE).read_text()) == spec:
                return last_checkpoint(work, prune=False)
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RepdispError(f"process 0 did not prepare the work folder {work} within {timeout:.0f} s")


def train_resumable(trainer: Any, resume: Path | None) -> None:
    """``trainer.train`` from ``resume``; when it stops on an error or an interrupt, the
    checkpoints already in its output folder are noted as finished work (``core.shards``)."""
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except BaseException:
        note_finished(sum(1 for _ in Path(trainer.args.output_dir).glob("checkpoint-*")))
        raise
