"""A small, real fine-tuning recipe (HF Trainer; PEFT LoRA or full) that writes a loadable checkpoint.

The training data are the token segments of ``corpus.make_segments`` (non-overlapping windows of
``seq_len`` tokens, BOS prepended when the tokenizer adds one), so training sees exactly the input
format that extraction sees. ``train_fraction`` < 1 trains only on the first part of the text and
writes the rest to ``heldout.txt``, so dispersion and perplexity before/after can be measured on
text the model was not trained on. LoRA adapters are merged into the base weights at the end, so
the output folder is a plain safetensors model + tokenizer that ``models.load_model`` loads.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.bootstrap import bootstrap_ci, bootstrap_weights
from ..core.corpus import Segments, load_texts, make_segments
from ..core.errors import RepdispError
from ..core.geometry import (
    dispersion,
    unit_rows,
    weighted_dispersion,
)
from ..core.models import LoadedModel, load_model
from ..core.sampling import Sampling
from ..core.shards import atomic_write
from ..io.results import Result, new_figure, record, recorded, save_figure, write_csv, write_result
from .callback import DispersionCallback, check_report_to, tensorboard_dir
from .checkpoints import open_work, start_step, train_resumable
from .data import split_docs
from .finetune_config import METHODS, FinetuneConfig  # noqa: F401 - METHODS: its older home
from .floor import plain_steps


@dataclass
class FinetuneResult(Result):
    """What a fine-tuning run did: settings, data sizes, loss curve and where the model is."""

    kind: ClassVar[str] = "finetune"
    run_keys: ClassVar[tuple[str, ...]] = ("seconds", "floor_seconds")

    base_model: str
    data: str
    method: str
    steps: int
    learning_rate: float
    batch_size: int
    seq_len: int
    seed: int
    lora_r: int | None
    lora_alpha: int | None
    train_fraction: float
    train_segments: int
    train_tokens_seen: int
    trainable_params: int
    total_params: int
    checkpoint: str
    heldout: str | None
    seconds: float
    loss: list[dict[str, float]] = field(default_factory=list)
    floor_seconds: float = 0.0  # plain optimiser steps for the steps this call ran (floor.py)

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"loss": self.loss}

    def table(self) -> str:
        first, last = (self.loss[0]["loss"], self.loss[-1]["loss"]) if self.loss else (None, None)
        return (
            f"{self.method} fine-tune of {self.base_model}: {self.steps} steps x {self.batch_size}"
            f" x {self.seq_len} tokens on {self.train_segments} training segments; "
            f"{self.trainable_params:,} of {self.total_params:,} parameters trained; loss "
            f"{first} -> {last}"
        )

    def figure(self) -> Any:
        fig, ax = new_figure(figsize=(5, 3.2))
        ax.plot([r["step"] for r in self.loss], [r["loss"] for r in self.loss], marker=".")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("training loss (mean NLL per token, nats)")
        ax.set_title(
            f"{self.method} fine-tune of {Path(self.base_model).name} on {Path(self.data).name}"
        )
        ax.grid(alpha=0.3)
        return fig


def split_text(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Cut the documents at ``fraction`` of their total characters (at the next line break):
    the documents before the cut train, the ones after are held out. Works for one big file too."""
    if not 0.0 < fraction <= 1.0:
        raise RepdispError(f"--train-fraction must be in (0, 1], got {fraction}")
    head, tail = split_docs(docs, [fraction, 1.0 - fraction], next_line=True)
    return head, tail


class _SegmentDataset:
    """Token segments as causal-LM examples (labels = inputs; the model shifts them)."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        x = torch.from_numpy(self.ids[i].copy())
        return {"input_ids": x, "labels": x.clone()}


def _wrap_lora(model: Any, r: int, alpha: int, dropout: float) -> Any:
    from peft import LoraConfig, get_peft_model

    # target_modules=None: PEFT's per-architecture default (llama: q_proj, v_proj; gpt2: c_attn)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def finetune(
    model: str | LoadedModel,
    data: str,
    out: str | Path,
    *,
    config: FinetuneConfig | None = None,
    device: str = "auto",
    progress: bool = True,
    callbacks: list[Any] | None = None,
    **settings: Any,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``data`` for ``config.steps`` optimiser steps and save it to ``out``.

    ``config``: the recipe (``training.finetune_config.FinetuneConfig``); its fields may also be
    given here as keywords (``steps=3, method="full"``), which replace those of ``config``.
    ``out`` appears only when the job is done (it is written beside it and renamed). Meanwhile
    ``.OUT.partial`` beside it holds a checkpoint every ``save_every`` steps (0: none); the same
    call after a crash resumes from the last one (``training.checkpoints``). A tokenizer without
    a pad token is fine: the segments all have ``seq_len`` tokens and are never padded.
    ``callbacks``: extra ``TrainerCallback``s (tests use one to interrupt a run).
    ``report_to``: the Trainer's trackers (``none``, ``tensorboard`` - written to ``out/logs`` -,
    ``wandb``, ...). ``dispersion_every`` > 0 adds a ``DispersionCallback`` that logs the final
    site's dispersion on ``dispersion_segments`` fixed probe segments (held-out text when
    ``train_fraction`` < 1, else a seeded sample of the training segments) every that many
    steps."""
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    c = FinetuneConfig.build(config, **settings)
    tb = check_report_to(c.report_to)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RepdispError(f"--out {out} exists and is not empty; choose a new folder")
    start = time.perf_counter()
    lm = model if isinstance(model, LoadedModel) else load_model(model, device, "float32")
    docs = load_texts(data, c.text_field, c.split, c.encoding_errors)
    train_docs, heldout_docs = split_text(docs, c.train_fraction)
    segs = make_segments(
        lm.tokenizer, data, None, c.seq_len, c.seed, docs=train_docs, max_len=lm.max_len
    )
    spec = {"model": lm.identity, "segments": segs.fingerprint, **c.recipe()}
    work = out.with_name(f".{out.name}.partial")
    resume = open_work(work, spec, quiet=not progress)
    if resume is not None and progress:
        print(f"resuming from {resume.name} in {work}")

    net = lm.model
    net.train()
    if c.method == "lora":
        # the adapters' initial weights come from torch's global RNG: seed it, so two runs of
        # one recipe (and a resumed run) start from the same adapters
        torch.manual_seed(c.seed)
        net = _wrap_lora(net, c.lora_r, c.lora_alpha, c.lora_dropout)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    # timed before the Trainer holds its optimiser, so the peak is no higher than training's
    on_cpu = lm.device.type == "cpu"
    bf16 = not on_cpu and torch.cuda.is_bf16_supported()
    floor = plain_steps(
        net, segs.ids[: c.batch_size], c.steps - start_step(resume), c.grad_accum, bf16=bf16
    )
    total = sum(p.numel() for p in net.parameters())
    args = TrainingArguments(
        output_dir=str(work),
        max_steps=c.steps,
        per_device_train_batch_size=c.batch_size,
        gradient_accumulation_steps=c.grad_accum,
        learning_rate=c.learning_rate,
        warmup_steps=c.warmup_steps,
        weight_decay=c.weight_decay,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="steps" if c.save_every else "no",
        save_steps=c.save_every or None,
        save_total_limit=1 if c.save_every else None,
        eval_strategy="no",
        report_to=c.report_to,
        seed=c.seed,
        data_seed=c.seed,
        use_cpu=on_cpu,
        bf16=bf16,
        fp16=False,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    logs = out.with_name(f".{out.name}.logs")  # moved into OUT/logs at the end
    with tensorboard_dir(logs if tb else None):  # read when the Trainer is made
        trainer = Trainer(
            model=net,
            args=args,
            train_dataset=_SegmentDataset(segs.ids),
            data_collator=default_data_collator,  # fixed-length segments: no padding or pad token
            callbacks=callbacks,
        )
    if c.dispersion_every > 0:
        probe = segs
        if heldout_docs:
            probe = make_segments(
                lm.tokenizer, data, None, c.seq_len, c.seed, docs=heldout_docs, max_len=lm.max_len
            )
        order = np.random.default_rng(c.seed).permutation(len(probe))
        pick = np.sort(order[: c.dispersion_segments])
        probe = Segments(probe.ids[pick], probe.index[pick], probe.has_bos, data)
        DispersionCallback(probe, every_n_steps=c.dispersion_every).attach(trainer)
    train_resumable(trainer, resume)
    loss = [
        {
            "step": int(r["step"]),
            "loss": float(r["loss"]),
            "learning_rate": float(r["learning_rate"]),
        }
        for r in trainer.state.log_history
        if "loss" in r
    ]
    if c.method == "lora":
        net = net.merge_and_unload()
    net.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # a final save cut short by a kill
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        net.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)
        heldout = _write_heldout(tmp, heldout_docs) if heldout_docs else None
        result = FinetuneResult(
            base_model=lm.name,
            data=data,
            method=c.method,
            steps=c.steps,
            learning_rate=c.learning_rate,
            batch_size=c.batch_size * c.grad_accum,
            seq_len=c.seq_len,
            seed=c.seed,
            lora_r=c.lora_r if c.method == "lora" else None,
            lora_alpha=c.lora_alpha if c.method == "lora" else None,
            train_fraction=c.train_fraction,
            train_segments=len(segs),
            train_tokens_seen=c.steps * c.batch_size * c.grad_accum * segs.ids.shape[1],
            trainable_params=trainable,
            total_params=total,
            checkpoint=str(out),
            heldout=heldout and str(out / Path(heldout).name),
            seconds=time.perf_counter() - start,
            loss=loss,
            floor_seconds=floor,
        )
        record(result, models=lm, data=segs, seed=c.seed)
        write_outputs(result, tmp)
        if tb and logs.is_dir():
            os.replace(logs, tmp / "logs")
        if out.exists():  # an empty folder given as --out
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return result


def _write_heldout(out: Path, docs: list[str]) -> str:
    """The held-out text as a file any ``--data`` option reads (one document: .txt; more: .jsonl)."""
    if len(docs) == 1:
        path, text = out / "heldout.txt", docs[0]
    else:
        path, text = out / "heldout.jsonl", "".join(json.dumps({"text": d}) + "\n" for d in docs)
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))
    return str(path)


def write_outputs(result: FinetuneResult, out: Path) -> None:
    """finetune.json (settings, sizes), finetune_loss.csv and finetune_loss.png (training loss)."""
    write_result(out, "finetune", result, tables=False, figure=False)
    write_csv(out / "finetune_loss.csv", result.loss)
    save_figure(result.figure(), out / "finetune_loss.png")


@dataclass
class BeforeAfter(Result):
    """Perplexity and final-layer last-token dispersion (95% bootstrap CI) of the base and the
    fine-tuned model on the same held-out segments, and the paired bootstrap CI of the change
    (both models' vectors resampled with the same segment indices)."""

    kind: ClassVar[str] = "before-after"

    data: str
    n_segments: int
    seq_len: int
    rows: list[dict[str, Any]]
    dispersion_change: float  # fine-tuned minus base
    change_ci_low: float
    change_ci_high: float
    ppl_lower_fraction: float  # share of segments whose perplexity went down

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"models": self.rows}

    def table(self) -> str:
        lines = [f"held-out {self.data}: {self.n_segments} segments x {self.seq_len} tokens"]
        for row in self.rows:
            lines.append(
                f"  {row['model']:<11} token ppl {row['token_ppl']:8.3f}  mean ppl "
                f"{row['mean_ppl']:8.3f}  dispersion {row['dispersion']:.5f} "
                f"[{row['ci_low']:.5f}, {row['ci_high']:.5f}]"
            )
        lines.append(
            f"  dispersion change {self.dispersion_change:+.5f} (paired 95% CI "
            f"[{self.change_ci_low:+.5f}, {self.change_ci_high:+.5f}]); perplexity lower on "
            f"{self.ppl_lower_fraction:.0%} of segments"
        )
        return "\n".join(lines)

    def headline(self) -> dict[str, Any] | None:
        lo, hi = self.change_ci_low, self.change_ci_high
        return {
            "what": f"change of final-layer last-token dispersion, fine-tuned minus base, on "
            f"held-out {Path(self.data).name} ({self.n_segments} segments x {self.seq_len} "
            "tokens, paired bootstrap)",
            "value": self.dispersion_change,
            "ci": [lo, hi],
            "answer": f"{self.dispersion_change:+.4f} [95% CI {lo:+.4f}, {hi:+.4f}]; perplexity "
            f"lower on {self.ppl_lower_fraction:.0%} of segments",
            "significant": bool(lo > 0 or hi < 0),
        }

    def figure(self) -> Any:
        """Two panels: token-level perplexity; dispersion with its 95% CI."""
        names = [r["model"] for r in self.rows]
        disp = np.array([r["dispersion"] for r in self.rows])
        lo = np.array([r["ci_low"] for r in self.rows])
        hi = np.array([r["ci_high"] for r in self.rows])
        fig, (a, b) = new_figure(1, 2, figsize=(9, 3.4), layout="constrained")
        a.bar(names, [r["token_ppl"] for r in self.rows], color=["#888", "#37c"])
        a.set_ylabel("token-level perplexity, exp(mean NLL)")
        b.bar(names, disp, color=["#888", "#37c"])
        b.vlines(range(len(names)), lo, hi, color="k", lw=1.5)
        b.set_ylabel("dispersion (final, last token), 1 - cos")
        spread = float(np.max(hi - lo)) if len(hi) else 0.0
        b.set_ylim(max(0.0, float(min(disp.min(), lo.min())) - 3 * spread - 0.02), None)
        fig.suptitle(
            f"held-out {Path(self.data).name}: {self.n_segments} x {self.seq_len} tokens; "
            f"dispersion change {self.dispersion_change:+.4f} "
            f"[{self.change_ci_low:+.4f}, {self.change_ci_high:+.4f}]"
        )
        return fig


@recorded
def before_after(
    base: str,
    checkpoint: str | Path,
    data: str,
    *,
    sampling: Sampling | None = None,
    device: str = "auto",
    bootstrap: int = 1000,
) -> BeforeAfter:
    """Measure base and fine-tuned model on identical segments of ``data`` (e.g. heldout.txt);
    the checkpoint keeps the base tokenizer, so the base model's segments serve both.
    ``sampling`` defaults to 128 segments of 128 tokens, seed 0."""
    sampling = sampling or Sampling(segments=128, seq_len=128)
    seed = sampling.seed
    segs, rows, units, ppl, used = None, [], [], [], []
    for label, spec in (("base", base), ("fine-tuned", str(checkpoint))):
        lm = load_model(spec, device)
        used.append(lm)
        segs = segs if segs is not None else sampling.sample(lm, data)
        ex = sampling.extract(lm, segs, "final", "last")
        x = ex.get(ex.sites[0], "last")
        lo, hi = bootstrap_ci(x, bootstrap, seed)
        rows.append(
            {
                "model": label,
                "spec": spec,
                "mean_ppl": float(ex.seq_ppl.mean()),
                "token_ppl": float(np.exp(ex.mean_nll.mean())),
                "dispersion": dispersion(x),
                "ci_low": lo,
                "ci_high": hi,
            }
        )
        units.append(unit_rows(x))
        ppl.append(ex.seq_ppl)
    n = len(segs)
    diffs = np.concatenate(
        [
            weighted_dispersion(units[1], w) - weighted_dispersion(units[0], w)
            for w in bootstrap_weights(n, bootstrap, seed)
        ]
    )
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    change = rows[1]["dispersion"] - rows[0]["dispersion"]
    lower = float((ppl[1] < ppl[0]).mean())
    result = BeforeAfter(data, n, sampling.seq_len, rows, change, float(lo), float(hi), lower)
    return record(result, models=used, data=segs, seed=seed)


def write_before_after(result: BeforeAfter, out: Path) -> None:
    """finetune_eval.json/.csv and a two-panel bar plot (perplexity; dispersion with CI)."""
    write_result(out, "finetune_eval", result)
