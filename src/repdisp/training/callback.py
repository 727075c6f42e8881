"""Watch dispersion while a model trains: a ``transformers.TrainerCallback``.

``DispersionCallback`` measures the representation dispersion of the model being trained on a
fixed held-out probe set of token segments (the same segments every time, so the values form a
curve), at chosen sites, every ``every_n_steps`` optimiser steps and/or at each evaluation. Each
measurement is exact: the pooled vectors of the N probe segments are read with one forward pass
per batch (``core.extract``, no cache, no LM head) and Eq. 1 is computed in O(N·d) from the sum
of unit vectors (``core.geometry.CosineStats``).

Names: ``dispersion/<site>`` at training steps and ``eval_dispersion/<site>`` at evaluations,
``<site>`` spelled as the user gave it (``-1.attn`` stays ``-1.attn``, not the resolved block);
``prefix`` replaces ``dispersion``.

    cb = DispersionCallback(probe_segments, sites=["final", "-1.attn"], every_n_steps=50)
    cb.attach(trainer)          # adds the callback and lets it reach the trackers
    trainer.train()

With ``attach`` each measurement goes, under exactly these names, to ``state.log_history`` (one
record ``{name: value, ..., "step": global_step}``), to TensorBoard (``add_scalar(name, value,
global_step)`` on the ``report_to`` writer: transformers' own ``on_log`` would rename it
``train/dispersion/...``), to W&B (``wandb.log({name: value, "train/global_step": step})``, the
step metric the W&B integration defines) and to the ``on_log`` of every other callback (MLflow,
``CSVLogger``, the progress printer, ...), as ``Trainer.log`` would. An evaluation's values are
sent when it is measured (after the Trainer logged its own metrics) and are also added to the
``metrics`` that ``trainer.evaluate()`` returns.

Added only through ``Trainer(callbacks=[cb])`` the callback cannot reach the trainer's other
callbacks: its records still go to ``state.log_history``, and its values ride on the next
``logs`` dict that passes through its ``on_log`` (so the callbacks after it see them), but the
``report_to`` integrations, which the Trainer registers first, do not; ``attach`` is the way to
report them. ``history`` keeps every measurement as ``{"step": ..., "<name>": ...}``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback

from ..core.corpus import Segments
from ..core.errors import RepdispError
from ..core.extract import extract
from ..core.geometry import CosineStats
from ..core.models import LoadedModel
from ..core.sites import parse_site


def _unwrap(model: Any) -> Any:
    """The transformers model under DDP/PEFT wrappers (LoRA layers stay injected in it)."""
    model = getattr(model, "module", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def as_segments(probe: Any) -> Segments:
    """A ``Segments`` from ``Segments`` or an (N, T) integer array of token ids."""
    if isinstance(probe, Segments):
        return probe
    ids = np.asarray(probe)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise RepdispError(f"the probe set must be (N, T) token ids, got shape {ids.shape}")
    return Segments(ids.astype(np.int64), np.arange(len(ids)), False, "probe")


class DispersionCallback(TrainerCallback):
    """Dispersion of the training model on a fixed probe set, logged through the Trainer.

    ``probe``: ``Segments`` (e.g. ``make_segments(tok, "heldout.txt", 64, 128)``) or (N, T)
    token ids, N >= 2. ``sites``: site names as anywhere in repdisp (``final``, ``-1.attn``,
    ``3.ffn``, ...). ``pooling``: ``last`` (the paper's h_N) or ``mean``. ``every_n_steps``:
    measure every N optimiser steps (None: only at evaluations, if ``at_evaluate``).

    Examples
    --------
    >>> import numpy as np
    >>> from repdisp import DispersionCallback
    >>> probe = np.arange(64).reshape(4, 16)  # 4 probe segments of 16 token ids
    >>> cb = DispersionCallback(probe, sites=["final", "-1.attn"], every_n_steps=50)
    >>> len(cb.probe), cb.every_n_steps, cb.history
    (4, 50, [])
    >>> # cb.attach(trainer); trainer.train()  -> "dispersion/final" etc. in report_to
    """

    def __init__(
        self,
        probe: Any,
        *,
        sites: str | list[str] = "final",
        pooling: str = "last",
        every_n_steps: int | None = None,
        at_evaluate: bool = True,
        batch_size: int = 8,
        skip_first: int = 1,
        prefix: str = "dispersion",
    ):
        self.probe = as_segments(probe)
        if len(self.probe) < 2:
            raise RepdispError("the probe set needs at least 2 segments")
        if pooling not in ("last", "mean"):
            raise RepdispError(f"pooling must be last or mean, got {pooling!r}")
        if every_n_steps is not None and every_n_steps < 1:
            raise RepdispError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.sites = sites
        self.pooling = pooling
        self.every_n_steps = every_n_steps
        self.at_evaluate = at_evaluate
        self.batch_size = batch_size
        self.skip_first = skip_first
        self.prefix = prefix
        self.trainer: Any = None
        self.history: list[dict[str, float]] = []
        self._pending: dict[str, float] | None = None
        self._last_step: int | None = None

    def attach(self, trainer: Any) -> DispersionCallback:
        """Add this callback to ``trainer`` and log through ``trainer.log``."""
        trainer.add_callback(self)
        self.trainer = trainer
        return self

    def measure(self, model: Any) -> dict[str, float]:
        """``{"<prefix>/<site>": dispersion}`` of ``model`` on the probe set, exact, O(N·d)."""
        import torch

        net = _unwrap(model)
        param = next(net.parameters())
        lm = LoadedModel(net, None, "training", "training", param.device, param.dtype)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                ex = extract(
                    lm,
                    self.probe,
                    self.sites,
                    self.pooling,
                    perplexity=False,
                    batch_size=self.batch_size,
                    skip_first=self.skip_first,
                    cache=False,
                    progress=False,
                )
        finally:
            net.train(was_training)
        resolved = {site: CosineStats().update(ex.get(site, self.pooling)).dispersion
                    for site in ex.sites}  # fmt: skip
        return {f"{self.prefix}/{name}": resolved[site] for name, site in
                self._spellings(lm.n_blocks, ex.sites)}  # fmt: skip

    def _spellings(self, n_blocks: int, resolved: list[str]) -> list[tuple[str, str]]:
        """(name as the user wrote it, resolved site) for each requested site; groups (``all``,
        ``all.attn``, ``everything``) give their resolved names."""
        items = self.sites.split(",") if isinstance(self.sites, str) else [
            s for x in self.sites for s in x.split(",")]  # fmt: skip
        out: list[tuple[str, str]] = []
        for item in (s.strip() for s in items if s.strip()):
            if item in ("all", "all.attn", "everything"):
                continue
            pair = (item, parse_site(item, n_blocks).name)
            if pair not in out:
                out.append(pair)
        named = {site for _, site in out}
        return out + [(site, site) for site in resolved if site not in named]

    def _report(
        self, model: Any, args: Any, state: Any, control: Any, evaluation: bool = False
    ) -> dict[str, float]:
        if self._last_step == state.global_step and self.history:
            values = {k: v for k, v in self.history[-1].items() if k != "step"}
        else:
            values = self.measure(model)
            self.history.append({"step": state.global_step, **values})
            self._last_step = state.global_step
        sent = {f"eval_{k}": v for k, v in values.items()} if evaluation else dict(values)
        self._send(sent, model, args, state, control)
        return values

    def _send(self, values: dict[str, float], model: Any, args: Any, state: Any, control: Any):
        """``values`` under their own names to log_history and, when attached, every tracker."""
        record = dict(values)
        if state.epoch is not None:
            record["epoch"] = state.epoch
        state.log_history.append({**record, "step": state.global_step})
        if self.trainer is None:
            self._pending = {**(self._pending or {}), **values}
            return
        for cb in self.trainer.callback_handler.callbacks:
            if cb is self:
                continue
            if type(cb).__name__ == "TensorBoardCallback":
                _to_tensorboard(cb, values, args, state)
            elif type(cb).__name__ == "WandbCallback":
                _to_wandb(cb, values, args, state, model)
            else:  # as Trainer.log does; keep the Trainer's own decision to log this step
                keep = control.should_log
                cb.on_log(args, state, control, logs=dict(record), model=model)
                control.should_log = keep

    # -- TrainerCallback events ----------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        if self.every_n_steps and model is not None and state.global_step == 0:
            self._report(model, args, state, control)  # the starting point of the curve

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        if self.every_n_steps and model is not None and state.global_step % self.every_n_steps == 0:
            self._report(model, args, state, control)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, model: Any = None, metrics: Any = None, **kw: Any
    ):
        if self.at_evaluate and model is not None:
            values = self._report(model, args, state, control, evaluation=True)
            if metrics is not None:
                metrics.update({f"eval_{k}": v for k, v in values.items()})

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
        if self._pending and logs is not None:
            logs.update(self._pending)  # for the callbacks after this one
            self._pending = None


def _to_tensorboard(cb: Any, values: dict[str, float], args: Any, state: Any) -> None:
    """Scalars on transformers' TensorBoard writer under their own tags (its on_log would add
    ``train/``); the writer is opened as its on_log opens it when no training started yet."""
    if not state.is_world_process_zero:
        return
    if cb.tb_writer is None:
        cb._init_summary_writer(args)
    if cb.tb_writer is not None:
        for k, v in values.items():
            cb.tb_writer.add_scalar(k, v, state.global_step)
        cb.tb_writer.flush()


def _to_wandb(cb: Any, values: dict[str, float], args: Any, state: Any, model: Any) -> None:
    """``wandb.log`` with the W&B integration's step metric, names unchanged."""
    if cb._wandb is None or not state.is_world_process_zero:
        return
    if not cb._initialized:
        cb.setup(args, state, model)
    cb._wandb.log({**values, "train/global_step": state.global_step})


def check_report_to(report_to: str | list[str]) -> bool:
    """Whether ``report_to`` names TensorBoard; a clear error when its package is missing."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        raise RepdispError(
            "--report-to tensorboard needs the tensorboard package (pip install tensorboard)"
        )
    return "tensorboard" in names


@contextlib.contextmanager
def tensorboard_dir(folder: Path | None) -> Iterator[None]:
    """Point transformers' TensorBoard callback at ``folder`` while a Trainer is made (it reads
    TENSORBOARD_LOGGING_DIR then), unless the user set that variable; for Trainers whose own
    output folder is temporary."""
    if folder is None or "TENSORBOARD_LOGGING_DIR" in os.environ:
        yield
        return
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder)
    try:
        yield
    finally:
        os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
