"""From-scratch GPT-2 recipe for the push-away experiments (Table 2): config, data, run, evaluation.

A run trains a randomly initialised GPT-2 on one domain (single-domain loss) or two (cross-domain
loss between them) with ``PushAwayTrainer`` and evaluates validation and test perplexity of every
domain at the configured steps. Data: each domain's training source is split by characters (at
line boundaries) into train / validation [/ test] parts; a separate test source can be given
instead (HumanEval for code). A GPT-2-style byte-level BPE is trained on the training parts with
``tokenizers`` unless a tokenizer folder is given. Prepared data is cached by content hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.corpus import BUILTIN_SOURCES, load_texts, token_stream
from ..core.errors import RepdispError
from ..core.geometry import CosineStats
from ..core.models import cache_root
from .loss import PushAwayLoss

EOT = "<|endoftext|>"


@dataclass
class DomainSpec:
    """One text domain: a training source, and a test source or a held-out test fraction.

    ``text_field`` may join fields with ``+`` (``prompt+canonical_solution``)."""

    name: str
    train: str
    text_field: str = "text"
    test: str | None = None
    test_field: str = "text"
    val_fraction: float = 0.05
    test_fraction: float = 0.1
    max_chars: int | None = None


@dataclass
class TrainConfig:
    """A training recipe (YAML keys = field names; ``sweep:`` holds the grid)."""

    name: str
    domains: list[DomainSpec]
    model: dict[str, Any] = field(default_factory=dict)  # GPT2Config keyword arguments
    tokenizer: str | None = None  # folder of a HF tokenizer; None = train a byte-level BPE
    vocab_size: int = 8192
    block_size: int = 512
    batch_size: int = 64  # global: per device x processes x accumulation
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    scheduler: str = "cosine"
    max_steps: int = 1000
    eval_steps: list[int] = field(default_factory=lambda: [500, 1000])  # + always max_steps
    eval_blocks: int = 256
    log_steps: int = 10
    seed: int = 0
    aux_weight: float = 0.0
    aux_all_reduce: bool = True
    bf16: bool = False
    sweep_aux_weights: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 0.5, 1.0])
    sweep_lrs: list[float] = field(default_factory=lambda: [1e-3, 7e-4, 5e-4])
    sweep_seeds: list[int] = field(default_factory=lambda: [0])
    base_dir: str = "."  # relative data paths are resolved against the config file's folder

    @property
    def mode(self) -> str:
        return "cross" if len(self.domains) == 2 else "single"


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a YAML recipe; ``overrides`` (None values ignored) replace top-level keys."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RepdispError(f"config {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    sweep = raw.pop("sweep", None) or {}
    if not isinstance(sweep, dict):
        raise RepdispError(f"config {path}: sweep must be a mapping (aux_weights, lrs, seeds)")
    raw.update({f"sweep_{k}": v for k, v in sweep.items()})
    raw.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RepdispError(f"config {path}: unknown key(s) {unknown}; known: {sorted(known)}")
    doms = raw.get("domains") or []
    if not 1 <= len(doms) <= 2:
        raise RepdispError(
            f"config {path}: give one domain (single) or two (cross), not {len(doms)}"
        )
    try:
        raw["domains"] = [DomainSpec(**d) for d in doms]
        cfg = TrainConfig(**{"base_dir": str(path.resolve().parent), **raw})
    except TypeError as e:
        raise RepdispError(f"config {path}: {e}") from None
    for k in ("lr", "weight_decay", "aux_weight"):
        setattr(cfg, k, float(getattr(cfg, k)))
    cfg.sweep_lrs = [float(x) for x in cfg.sweep_lrs]
    cfg.sweep_aux_weights = [float(x) for x in cfg.sweep_aux_weights]
    if cfg.batch_size % cfg.grad_accum:
        raise RepdispError(f"batch_size {cfg.batch_size} is not a multiple of grad_accum")
    return cfg


def _resolve(cfg: TrainConfig, source: str) -> str:
    if source in BUILTIN_SOURCES or source.startswith("hf:") or Path(source).is_absolute():
        return source
    return str(Path(cfg.base_dir) / source)


def _load(cfg: TrainConfig, source: str, text_field: str) -> list[str]:
    """Documents of a source; ``a+b`` concatenates two fields of every record."""
    parts = [load_texts(_resolve(cfg, source), f) for f in text_field.split("+")]
    if len({len(p) for p in parts}) > 1:
        raise RepdispError(f"{source}: fields {text_field!r} have different numbers of records")
    return ["".join(t) for t in zip(*parts, strict=True)]


def split_docs(docs: list[str], fractions: list[float]) -> list[list[str]]:
    """Cut the documents, in order, into consecutive parts holding ``fractions`` of the characters.

    A cut falls on a line boundary inside the document it lands in."""
    total = sum(len(d) for d in docs)
    cuts = list(np.cumsum(fractions)[:-1] * total)
    parts: list[list[str]] = [[] for _ in fractions]
    k, pos = 0, 0
    for doc in docs:
        start = 0
        while k < len(cuts) and pos + len(doc) > cuts[k]:
            at = int(cuts[k] - pos)
            nl = doc.rfind("\n", start, at)
            cut = nl + 1 if nl >= start else max(at, start)
            if doc[start:cut].strip():
                parts[k].append(doc[start:cut])
            start, k = cut, k + 1
        if doc[start:].strip():
            parts[k].append(doc[start:])
        pos += len(doc)
    return parts


def train_bpe(texts: list[str], vocab_size: int) -> Any:
    """A GPT-2-style byte-level BPE (``<|endoftext|>`` as BOS/EOS/pad) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=EOT, pad_token=EOT
    )


@dataclass
class PreparedData:
    """Tokenizer and token blocks (n, block_size) per split and domain name."""

    tokenizer: Any
    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    test: dict[str, np.ndarray]


def _blocks(tokenizer: Any, docs: list[str], block: int, cap: int | None = None) -> np.ndarray:
    stream = token_stream(tokenizer, docs)
    n = len(stream) // block
    if n == 0:
        raise RepdispError(f"{len(stream)} tokens: fewer than one block of {block}")
    blocks = stream[: n * block].reshape(n, block)
    if cap is not None and n > cap:
        blocks = blocks[np.linspace(0, n - 1, cap).round().astype(int)]
    return blocks


def prepare_data(cfg: TrainConfig, cache: bool = True) -> PreparedData:
    """Split, tokenise and block every domain (cached under the repdisp cache by content hash)."""
    splits: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}, "test": {}}
    for dom in cfg.domains:
        docs = _load(cfg, dom.train, dom.text_field)
        if dom.test is None:
            fr = [1 - dom.val_fraction - dom.test_fraction, dom.val_fraction, dom.test_fraction]
            train, val, test = split_docs(docs, fr)
        else:
            train, val = split_docs(docs, [1 - dom.val_fraction, dom.val_fraction])
            test = _load(cfg, dom.test, dom.test_field)
        total = sum(map(len, train))
        if dom.max_chars is not None and total > dom.max_chars:
            train = split_docs(train, [dom.max_chars / total, 1 - dom.max_chars / total])[0]
        for name, part in zip(("train", "val", "test"), (train, val, test), strict=True):
            splits[name][dom.name] = part
    key = hashlib.sha256(
        json.dumps(
            [splits, cfg.tokenizer, cfg.vocab_size, cfg.block_size, cfg.eval_blocks],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    folder = cache_root() / "training" / key
    if cache and (folder / "blocks.npz").is_file():
        from transformers import AutoTokenizer

        arrays = np.load(folder / "blocks.npz")
        tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
        by = {s: {d.name: arrays[f"{s}/{d.name}"] for d in cfg.domains} for s in splits}
        return PreparedData(tok, by["train"], by["val"], by["test"])
    if cfg.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(_resolve(cfg, cfg.tokenizer))
    else:
        tok = train_bpe([t for d in splits["train"].values() for t in d], cfg.vocab_size)
    by = {
        s: {
            name: _blocks(tok, docs, cfg.block_size, None if s == "train" else cfg.eval_blocks)
            for name, docs in splits[s].items()
        }
        for s in splits
    }
    if cache:
        tmp = folder.with_name(f"{key}.tmp{os.getpid()}")
        tok.save_pretrained(tmp / "tokenizer")
        np.savez(tmp / "blocks.npz", **{f"{s}/{n}": a for s, d in by.items() for n, a in d.items()})
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep its copy
            pass
    return PreparedData(tok, by["train"], by["val"], by["test"])


class BlockDataset(torch.utils.data.Dataset):
    """Training examples in a fixed order: ``(domain, block)`` pairs, reshuffled every epoch.

    Cross-domain: domains alternate (A, B, A, B, ...) so every even-sized contiguous batch, and
    every process's share of it, holds both domains half and half."""

    def __init__(self, blocks: list[np.ndarray], n_items: int, seed: int):
        rng = np.random.default_rng(seed)
        per = math.ceil(n_items / len(blocks))
        orders = []
        for b in blocks:
            reps = math.ceil(per / len(b))
            orders.append(np.concatenate([rng.permutation(len(b)) for _ in range(reps)])[:per])
        self.blocks = blocks
        self.order = [(d, int(orders[d][i])) for i in range(per) for d in range(len(blocks))]
        self.order = self.order[:n_items]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        d, j = self.order[i]
        ids = torch.from_numpy(self.blocks[d][j])
        return {"input_ids": ids, "labels": ids, "domain": torch.tensor(d)}


@torch.no_grad()
def evaluate(model: Any, blocks: np.ndarray, batch_size: int = 16) -> dict[str, float]:
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
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..io.results import save_figure

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
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
                        r = evaluate(model, getattr(data, split)[n])
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
