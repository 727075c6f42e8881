"""Watch dispersion while a model trains: a ``transformers.TrainerCallback``.

``DispersionCallback`` measures the representation dispersion of the model being trained on a
fixed held-out probe set of token segments (the same segments every time, so the values form a
curve), at chosen sites, every ``every_n_steps`` optimiser steps and/or at each evaluation. Each
measurement is exact: the pooled vectors of the N probe segments are read with one forward pass
per batch (``core.extract``, no cache, no LM head) and Eq. 1 is computed in O(N·d) from the sum
of unit vectors (``core.geometry.CosineStats``).

The values go out through the Trainer's own logging, so whatever ``report_to`` the user set
(TensorBoard, W&B, MLflow, ...) receives them as scalars named ``dispersion/<site>``:

    cb = DispersionCallback(probe_segments, sites=["final", "-1.attn"], every_n_steps=50)
    cb.attach(trainer)          # adds the callback and lets it call trainer.log()
    trainer.train()

With ``attach`` the callback calls ``trainer.log`` (what the integrations listen to). Added only
through ``Trainer(callbacks=[cb])`` it cannot reach the trainer, so it adds its values to the
next ``logs`` dict that passes through ``on_log`` instead: they reach ``log_history`` and the
callbacks after it, but not the ``report_to`` integrations, which the Trainer registers first;
``attach`` is the way to report them. At an evaluation the
values are also added to the evaluation's ``metrics`` (``eval_dispersion/<site>``).
``history`` keeps every measurement as ``{"step": ..., "dispersion/<site>": ...}``.
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
        return {
            f"{self.prefix}/{site}": CosineStats().update(ex.get(site, self.pooling)).dispersion
            for site in ex.sites
        }

    def _report(self, model: Any, state: Any) -> dict[str, float]:
        if self._last_step == state.global_step and self.history:
            values = {k: v for k, v in self.history[-1].items() if k != "step"}
        else:
            values = self.measure(model)
            self.history.append({"step": state.global_step, **values})
            self._last_step = state.global_step
            if self.trainer is not None:
                # Trainer.log's on_log clears control.should_log: keep the Trainer's own decision
                # to log this step (loss, learning rate), which it takes after on_step_end
                keep = self.trainer.control.should_log
                self.trainer.log(dict(values))
                self.trainer.control.should_log = keep
            else:
                self._pending = dict(values)
        return values

    # -- TrainerCallback events ----------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        if self.every_n_steps and model is not None and state.global_step == 0:
            self._report(model, state)  # the starting point of the curve

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        if self.every_n_steps and model is not None and state.global_step % self.every_n_steps == 0:
            self._report(model, state)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, model: Any = None, metrics: Any = None, **kw: Any
    ):
        if self.at_evaluate and model is not None:
            values = self._report(model, state)
            if metrics is not None:
                metrics.update({f"eval_{k}": v for k, v in values.items()})

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
        if self._pending and logs is not None:
            logs.update(self._pending)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self._pending)  # the Trainer appended a copy
            self._pending = None


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
