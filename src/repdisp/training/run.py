"""One training run of a recipe: build the GPT-2, train with ``PushAwayTrainer`` and evaluate
validation and test perplexity (and final-layer dispersion) of every domain at the configured steps.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import RepdispError
from ..core.geometry import CosineStats
from .config import TrainConfig
from .data import BlockDataset, PreparedData, prepare_data
from .loss import PushAwayLoss


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
class RunResult:
    """One training run: its settings, the logged curve and the evaluations."""

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

    def eval_value(self, step: int, domain: str, split: str, key: str = "ppl") -> float:
        for e in self.evals:
            if (e["step"], e["domain"], e["split"]) == (step, domain, split):
                return e[key]
        raise KeyError((step, domain, split))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def plot(self, path: str | Path) -> Path:
        """Training CE and batch dispersion against the step."""
        from ..io.results import new_figure, save_figure

        fig, (ax1, ax2) = new_figure(1, 2, figsize=(9, 3.4))
        steps = [h["step"] for h in self.history]
        ax1.plot(steps, [h["ce"] for h in self.history])
        ax1.set(xlabel="step", ylabel="training CE", title=f"{self.name}, λ={self.aux_weight:g}")
        ax2.plot(steps, [h["dispersion"] for h in self.history])
        ax2.set(xlabel="step", ylabel=f"batch dispersion ({self.mode})")
        return save_figure(fig, path)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        return cls(**d)


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


def train_run(
    cfg: TrainConfig, data: PreparedData | None = None, progress: bool = False
) -> RunResult:
    """Train one model with ``cfg.aux_weight`` and evaluate it at ``cfg.eval_steps``."""
    from transformers import TrainerCallback, TrainingArguments, default_data_collator

    from .trainer import PushAwayTrainer

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
    history: list[dict[str, float]] = []
    evals: list[dict[str, Any]] = []
    steps = {s for s in cfg.eval_steps if 0 < s <= cfg.max_steps} | {cfg.max_steps}

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                history.append({"step": state.global_step, **logs})

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step in steps:
                for split in ("val", "test"):
                    for n in names:
                        r = evaluate_blocks(model, getattr(data, split)[n])
                        evals.append({"step": state.global_step, "domain": n, "split": split, **r})

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
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
            save_strategy="no",
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            bf16=cfg.bf16,
            seed=cfg.seed,
            train_sampling_strategy="sequential",
            remove_unused_columns=False,
            dataloader_drop_last=True,
            disable_tqdm=not progress,
        )
        trainer = PushAwayTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=default_data_collator,
            callbacks=[Recorder()],
            aux_weight=cfg.aux_weight,
            push_away=PushAwayLoss(cfg.mode, all_reduce=cfg.aux_all_reduce),
        )
        trainer.train()
    return RunResult(
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
    )
