"""Training data of a recipe: split, tokenise and block every domain; the training dataset.

Each domain's training source is split by characters (at line boundaries) into train / validation
[/ test] parts; a separate test source can be given instead (HumanEval for code). A GPT-2-style
byte-level BPE is trained on the training parts with ``tokenizers`` unless a tokenizer folder is
given. Prepared data is cached by content hash.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.corpus import load_texts, token_stream
from ..core.errors import RepdispError
from ..core.models import cache_root
from ..core.shards import atomic_folder
from .config import TrainConfig, _resolve

EOT = "<|endoftext|>"


def _load(cfg: TrainConfig, source: str, text_field: str) -> list[str]:
    """Documents of a source; ``a+b`` concatenates two fields of every record."""
    parts = [load_texts(_resolve(cfg, source), f) for f in text_field.split("+")]
    if len({len(p) for p in parts}) > 1:
        raise RepdispError(f"{source}: fields {text_field!r} have different numbers of records")
    return ["".join(t) for t in zip(*parts, strict=True)]


def split_docs(
    docs: list[str], fractions: list[float], *, next_line: bool = False
) -> list[list[str]]:
    """Cut the documents, in order, into consecutive parts holding ``fractions`` of the characters.

    A cut falls on a line boundary inside the document it lands in: the last one before it, or
    with ``next_line`` the first one at or after it. Blank pieces are dropped."""
    total = sum(len(d) for d in docs)
    cuts = list(np.cumsum(fractions)[:-1] * total)
    parts: list[list[str]] = [[] for _ in fractions]
    k, pos = 0, 0
    for doc in docs:
        start = 0
        while k < len(cuts) and pos + len(doc) > cuts[k]:
            at = int(cuts[k] - pos)
            if next_line:
                nl = doc.find("\n", max(at - 1, start))
                cut = len(doc) if nl < 0 else nl + 1
            else:
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
        with atomic_folder(folder, replace=False) as tmp:  # another process first: keep its copy
            tok.save_pretrained(tmp / "tokenizer")
            arrays = {f"{s}/{n}": a for s, d in by.items() for n, a in d.items()}
            np.savez(tmp / "blocks.npz", **arrays)
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
