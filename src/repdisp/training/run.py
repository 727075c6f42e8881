"""One training run of a recipe: build the GPT-2, train with ``PushAwayTrainer`` and evaluate
validation and test perplexity (and final-layer dispersion) of every domain at the configured steps.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..core.errors import RepdispError
from ..core.geometry import CosineStats
from ..io.results import Result, data_provenance, new_figure, record, save_figure
from .callback import DispersionCallback, check_report_to, tensorboard_dir
from .checkpoints import check_save_every, open_work, start_step, train_resumable, wait_for_work
from .config import TrainConfig
from .data import BlockDataset, PreparedData, prepare_data
from .floor import plain_eval, plain_steps
from .loss import PushAwayLoss

_EVAL = "repdisp_eval"  # key of the evaluation rows in the Trainer's log history


@torch.no_grad()
def evaluate_blocks(model: Any, blocks: np.ndarray, batch_size: int = 16) -> dict[str, float]:
    """Perplexity over all predicted tokens of the blocks, and the token-level dispersion of the
    final-layer states (exact, via ``CosineStats``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll, n_pred, stats = 0.0, 0, CosineStats()
    for start in range(0, len(blocks), batch_size):
        x = torch.from_numpy(blocks[start : start + batch_size]).to(device)
        out = model(input_ids=x, labels=x, output_hidden_states=True)
        k = x.shape[0] * (x.shape[1] - 1)
        nll += float(out.loss) * k
        n_pred += k
        h = out.hidden_states[-1]
        stats.update(h.reshape(-1, h.shape[-1]).float())
    model.train(was_training)
    return {"nll": nll / n_pred, "ppl": math.exp(nll / n_pred), "dispersion": stats.dispersion}


@dataclass
class RunResult(Result):
    """One training run: its settings, the logged curve and the evaluations."""

    kind: ClassVar[str] = "train"
    run_keys: ClassVar[tuple[str, ...]] = ("wall_s", "floor_s")

    name: str
    mode: str
    domains: list[str]
    lr: float
    aux_weight: float
    seed: int
    max_steps: int
    batch_size: int
    block_size: int
    n_params: int
    world_size: int
    train_blocks: dict[str, int]
    history: list[dict[str, float]]  # step, loss, ce, aux, dispersion, learning_rate
    evals: list[dict[str, Any]]  # step, domain, split, ppl, nll, dispersion
    wall_s: float
    floor_s: float = 0.0  # plain optimiser steps for the steps this call ran (floor.py)

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"history": self.history, "evals": self.evals}

    def headline(self) -> dict[str, Any] | None:
        last = max((e["step"] for e in self.evals), default=None)
        test = [e for e in self.evals if e["step"] == last and e["split"] == "test"]
        if not test:
            return None
        return {
            "what": f"test perplexity after {last} steps: {self.name}, λ {self.aux_weight:g}, "
            f"lr {self.lr:g}, seed {self.seed}",
            "value": test[0]["ppl"],
            "ci": None,
            "answer": "; ".join(
                f"{e['domain']} {e['ppl']:.2f} (dispersion {e['dispersion']:.4f})" for e in test
            ),
            "significant": None,
        }

    def plot(self, path: str | Path) -> Path:
        """Training CE and batch dispersion against the step, as a PNG."""
        return save_figure(self.figure(), path)

    def figure(self) -> Any:
        """Training CE and batch dispersion against the step."""
        fig, (ax1, ax2) = new_figure(1, 2, figsize=(9, 3.4))
        steps = [h["step"] for h in self.history]
        ax1.plot(steps, [h["ce"] for h in self.history])
        ax1.set(xlabel="step", ylabel="training CE", title=f"{self.name}, λ={self.aux_weight:g}")
        ax2.plot(steps, [h["dispersion"] for h in self.history])
        ax2.set(xlabel="step", ylabel=f"batch dispersion ({self.mode}), 1 - cos")
        return fig


def build_model(cfg: TrainConfig, tokenizer: Any) -> Any:
    """A randomly initialised GPT-2 (``cfg.model`` = GPT2Config overrides) seeded by ``cfg.seed``."""
    from transformers import GPT2Config, GPT2LMHeadModel, set_seed

    set_seed(cfg.seed)
    conf = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.block_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **cfg.model,
    )
    return GPT2LMHeadModel(conf)


def _job_spec(cfg: TrainConfig, data: PreparedData, names: list[str], world: int) -> dict:
    """Everything a checkpoint of this run depends on: the settings and the training tokens."""
    spec = {k: v for k, v in asdict(cfg).items() if not k.startswith("sweep_") and k != "base_dir"}
    h = hashlib.sha256()
    for n in names:
        h.update(np.ascontiguousarray(data.train[n]).tobytes())
    return spec | {"train_sha256": h.hexdigest(), "world_size": world}


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How ``train_run`` reports, probes and checkpoints (beside the ``TrainConfig``, which says
    what is trained): the Trainer's trackers ``report_to`` with TensorBoard files in
    ``logging_dir``, a ``DispersionCallback`` every ``dispersion_every`` steps (0: none), a
    checkpoint in ``checkpoint_dir`` every ``save_every`` steps (0: none), extra
    ``callbacks``."""

    report_to: str | list[str] = "none"
    logging_dir: str | Path | None = None
    dispersion_every: int = 0
    checkpoint_dir: str | Path | None = None
    save_every: int = 0
    callbacks: list[Any] | None = None


def train_run(
    cfg: TrainConfig,
    data: PreparedData | None = None,
    progress: bool = False,
    *,
    report_to: str | list[str] = "none",
    logging_dir: str | Path | None = None,
    dispersion_every: int = 0,
    checkpoint_dir: str | Path | None = None,
    save_every: int = 0,
    callbacks: list[Any] | None = None,
) -> RunResult:
    """Train one model with ``cfg.aux_weight`` and evaluate it at ``cfg.eval_steps``.

    ``report_to``: the Trainer's trackers (``none``, ``tensorboard``, ``wandb``, ...); they get
    the loss, CE, auxiliary loss and batch dispersion the Trainer logs. TensorBoard files go to
    ``logging_dir``. ``dispersion_every`` > 0 adds a ``DispersionCallback`` (final site, up to
    32 validation blocks of the first domain) every that many steps.

    With ``checkpoint_dir`` and ``save_every`` > 0, a checkpoint is saved there every
    ``save_every`` steps (a multiple of ``log_steps``, so no partly averaged log is lost) and the
    same call after a crash resumes from the last one (``training.checkpoints``); the history and
    evaluations travel in the Trainer state, so the result equals an uninterrupted run's. The
    folder is removed when the run ends. ``callbacks``: extra ``TrainerCallback``s.
    The keywords become a ``RunOptions`` for ``run_train``."""
    return run_train(
        cfg,
        data,
        progress,
        RunOptions(
            report_to=report_to,
            logging_dir=logging_dir,
            dispersion_every=dispersion_every,
            checkpoint_dir=checkpoint_dir,
            save_every=save_every,
            callbacks=callbacks,
        ),
    )


def run_train(
    cfg: TrainConfig,
    data: PreparedData | None = None,
    progress: bool = False,
    options: RunOptions | None = None,
) -> RunResult:
    """``train_run`` on a ``RunOptions`` (the commands and the sweep call this)."""
    options = options or RunOptions()
    report_to, logging_dir = options.report_to, options.logging_dir
    dispersion_every, callbacks = options.dispersion_every, options.callbacks
    checkpoint_dir, save_every = options.checkpoint_dir, options.save_every
    from transformers import TrainerCallback, TrainingArguments, default_data_collator

    from .trainer import PushAwayTrainer

    check_save_every(save_every)
    if save_every and save_every % cfg.log_steps:
        raise RepdispError(
            f"--save-every {save_every} must be a multiple of the config's log_steps "
            f"({cfg.log_steps}), so that every checkpoint falls right after a log"
        )
    data = data or prepare_data(cfg)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_device, rem = divmod(cfg.batch_size, world * cfg.grad_accum)
    if rem or per_device == 0:
        raise RepdispError(
            f"batch_size {cfg.batch_size} does not split over {world} process(es) x "
            f"{cfg.grad_accum} accumulation step(s)"
        )
    if cfg.mode == "cross" and per_device % 2:
        raise RepdispError(f"cross-domain needs an even per-device batch, got {per_device}")
    names = [d.name for d in cfg.domains]
    model = build_model(cfg, data.tokenizer)
    dataset = BlockDataset([data.train[n] for n in names], cfg.max_steps * cfg.batch_size, cfg.seed)
    steps = {s for s in cfg.eval_steps if 0 < s <= cfg.max_steps} | {cfg.max_steps}

    class Recorder(TrainerCallback):
        """Evaluations go into the Trainer's log history, which checkpoints carry."""

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step in steps:
                for split in ("val", "test"):
                    for n in names:
                        r = evaluate_blocks(model, getattr(data, split)[n])
                        row = {"step": state.global_step, "domain": n, "split": split, **r}
                        state.log_history.append({"step": state.global_step, _EVAL: row})

    t0 = time.perf_counter()
    resume = None
    keep = checkpoint_dir is not None and save_every > 0
    if keep:
        work = Path(checkpoint_dir)
        spec = _job_spec(cfg, data, names, world)
        if int(os.environ.get("RANK", "0")) == 0:
            resume = open_work(work, spec, quiet=not progress)
        else:
            resume = wait_for_work(work, spec)
        if resume is not None and progress:
            print(f"resuming from {resume.name} in {work}")
    blocks = np.asarray(data.train[names[0]])
    first = np.resize(blocks, (per_device, blocks.shape[1]))  # one micro-batch of the run's shape
    floor = plain_steps(
        model, first, cfg.max_steps - start_step(resume), cfg.grad_accum, bf16=cfg.bf16
    )
    ahead = [s for s in steps if s > start_step(resume)]  # the evaluations this call runs
    if ahead:
        held = [getattr(data, split)[n] for split in ("val", "test") for n in names]
        per_block = plain_eval(model, held[0]) / max(len(held[0]), 1)
        floor += per_block * len(ahead) * sum(len(b) for b in held)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=str(work) if keep else tmp,
            per_device_train_batch_size=per_device,
            gradient_accumulation_steps=cfg.grad_accum,
            learning_rate=cfg.lr,
            weight_decay=cfg.weight_decay,
            adam_beta1=cfg.adam_betas[0],
            adam_beta2=cfg.adam_betas[1],
            warmup_steps=cfg.warmup_steps,
            lr_scheduler_type=cfg.scheduler,
            max_steps=cfg.max_steps,
            logging_steps=cfg.log_steps,
            save_strategy="steps" if keep else "no",
            save_steps=save_every if keep else None,
            save_total_limit=1 if keep else None,
            report_to=report_to,
            use_cpu=not torch.cuda.is_available(),
            bf16=cfg.bf16,
            seed=cfg.seed,
            train_sampling_strategy="sequential",
            remove_unused_columns=False,
            dataloader_drop_last=True,
            disable_tqdm=not progress,
        )
        tb = check_report_to(report_to)
        with tensorboard_dir(Path(logging_dir) if tb and logging_dir else None):
            trainer = PushAwayTrainer(
                model=model,
                args=args,
                train_dataset=dataset,
                data_collator=default_data_collator,
                callbacks=[Recorder(), *(callbacks or [])],
                aux_weight=cfg.aux_weight,
                push_away=PushAwayLoss(cfg.mode, all_reduce=cfg.aux_all_reduce),
            )
        if dispersion_every > 0:
            probe = np.asarray(data.val[names[0]][:32])
            DispersionCallback(probe, every_n_steps=dispersion_every).attach(trainer)
        train_resumable(trainer, resume)
    log = trainer.state.log_history
    history = [
        {"step": e["step"], **{k: v for k, v in e.items() if k != "step"}}
        for e in log
        if "loss" in e
    ]
    evals = [e[_EVAL] for e in log if _EVAL in e]
    if keep and int(os.environ.get("RANK", "0")) == 0:
        shutil.rmtree(work, ignore_errors=True)
    result = RunResult(
        name=cfg.name,
        mode=cfg.mode,
        domains=names,
        lr=cfg.lr,
        aux_weight=cfg.aux_weight,
        seed=cfg.seed,
        max_steps=cfg.max_steps,
        batch_size=cfg.batch_size,
        block_size=cfg.block_size,
        n_params=sum(p.numel() for p in model.parameters()),
        world_size=world,
        train_blocks={n: len(data.train[n]) for n in names},
        history=history,
        evals=evals,
        wall_s=time.perf_counter() - t0,
        floor_s=floor,
    )
    data_ids = {n: data_provenance(np.asarray(data.train[n])) for n in names}
    return record(
        result,
        models={"name": "gpt2 (random init)", "n_params": result.n_params},
        data=[{"domain": n} | d for n, d in data_ids.items()],
        seed=cfg.seed,
    )
