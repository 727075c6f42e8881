"""Scoring (harness ``loglikelihood``) of formatted questions, and the scored result.

Trailing spaces of the context move to the continuation; continuation tokens = tokens(context +
continuation) minus the tokens(context) prefix; the score is the summed log-probability of those
tokens. ``acc`` takes the argmax of the sums, ``acc_norm`` the argmax of sum / UTF-8 byte length of
the choice text (``len(choice)`` in the harness; with letter continuations all lengths are equal,
so acc_norm = acc). A BOS token is prepended when the tokenizer adds one by default (Gemma), as
repdisp does everywhere.

Each question is ONE sequence (right-padded in the batch): the context, then every choice's
continuation tokens as a separate block that sees the context and itself only (4-D attention
mask, position ids restarting after the context), so the context is computed once for all
choices and the numbers equal running each context + continuation alone. The LM head runs only
on the positions that predict continuation tokens. The same pass gives the query embedding:
the hidden state at the chosen site of the last context token.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...core.corpus import bos_id
from ...core.errors import RepdispError
from ...core.extract import token_nll
from ...core.models import LoadedModel
from ...core.shards import atomic_write
from ...core.sites import SiteReader
from .prompts import MCPrompt, make_prompts
from .tasks import MCItem, default_format, load_task


@dataclass
class MCResult:
    """Per-question log-likelihoods, predictions and query embeddings."""

    items: list[MCItem] = field(repr=False)
    loglik: list[np.ndarray] = field(repr=False)
    pred: np.ndarray = field(repr=False)
    pred_norm: np.ndarray = field(repr=False)
    embeddings: np.ndarray = field(repr=False)
    site: str = "final"
    model: str = ""
    # tokens of each question's packed sequence (context + every choice's block), question
    # order; set by ``score``, not saved: what a plain forward over the same batches would read
    lengths: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def gold(self) -> np.ndarray:
        return np.array([it.answer for it in self.items])

    @property
    def has_labels(self) -> bool:
        return bool((self.gold >= 0).all())

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.gold

    @property
    def correct_norm(self) -> np.ndarray:
        return self.pred_norm == self.gold

    @property
    def acc(self) -> float:
        return float(self.correct.mean())

    @property
    def acc_norm(self) -> float:
        return float(self.correct_norm.mean())

    def save(self, path: str | Path) -> Path:
        """Write everything to one ``.npz`` (items as JSON), so later commands skip the model."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        width = max(len(ll) for ll in self.loglik)
        ll = np.full((len(self.loglik), width), np.nan)
        for i, row in enumerate(self.loglik):
            ll[i, : len(row)] = row
        items = json.dumps([asdict(it) for it in self.items])
        arrays = {
            "loglik": ll,
            "pred": self.pred,
            "pred_norm": self.pred_norm,
            "embeddings": self.embeddings,
            "model": np.array(self.model),
            "items": np.array(items),
            "site": np.array(self.site),
        }
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return path

    @classmethod
    def load(cls, path: str | Path) -> MCResult:
        try:
            with np.load(path) as z:
                items = [MCItem(**d) for d in json.loads(str(z["items"]))]
                loglik = [row[~np.isnan(row)] for row in z["loglik"]]
                return cls(
                    items,
                    loglik,
                    z["pred"],
                    z["pred_norm"],
                    z["embeddings"],
                    str(z["site"]),
                    str(z["model"]) if "model" in z.files else "",
                )
        except (OSError, KeyError, ValueError) as e:
            raise RepdispError(f"cannot read scored questions from {path}: {e}") from None


def encode_pair(
    tokenizer: Any, context: str, continuation: str, *, bos: int | None | str = "auto"
) -> tuple[list[int], list[int]]:
    """Harness ``_encode_pair``: context ids (with BOS when the tokenizer adds one) and the
    continuation ids = tokens(context + continuation) past the tokens(context) prefix.
    ``bos``: the BOS id to prepend (None: none); ``"auto"`` asks the tokenizer (``bos_id``)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    if bos == "auto":
        bos = bos_id(tokenizer)
    return ([bos] if bos is not None else []) + ctx, whole[len(ctx) :]


@dataclass
class _Packed:
    """One question as one sequence: the context, then each choice's continuation minus its last
    token (nothing is predicted from that one), each block attending to the context and to
    itself only and positioned right after the context, as if it were run alone."""

    qi: int
    ids: list[int]
    n_ctx: int
    blocks: list[tuple[int, int]]  # (start, length) of each choice's block
    targets: list[tuple[int, list[int], list[int]]]  # (choice, predicting positions, tokens)


def _pack(tokenizer: Any, qi: int, prompt: MCPrompt, bos: int | None) -> _Packed:
    pairs = [encode_pair(tokenizer, prompt.context, c, bos=bos) for c in prompt.continuations]
    ctx = pairs[0][0]
    ids, blocks, targets = list(ctx), [], []
    for ci, (_, cont) in enumerate(pairs):
        if not cont:
            raise RepdispError(f"question {qi}: choice {ci} encodes to no tokens")
        start = len(ids)
        ids += cont[:-1]
        blocks.append((start, len(cont) - 1))
        targets.append((ci, [len(ctx) - 1] + list(range(start, start + len(cont) - 1)), cont))
    return _Packed(qi, ids, len(ctx), blocks, targets)


def _masks(batch: list[_Packed], dtype: Any) -> tuple[Any, Any]:
    """Additive 4-D attention masks (B, 1, T, T) and position ids (B, T) of packed sequences.
    Padding positions attend to themselves only, so no row is fully masked (no NaN)."""
    import torch

    width = max(len(p.ids) for p in batch)
    allowed = torch.zeros((len(batch), width, width), dtype=torch.bool)
    pos = torch.zeros((len(batch), width), dtype=torch.long)
    for row, p in enumerate(batch):
        n = p.n_ctx
        allowed[row, :n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
        pos[row, :n] = torch.arange(n)
        for start, length in p.blocks:
            end = start + length
            allowed[row, start:end, :n] = True
            allowed[row, start:end, start:end] = torch.ones(length, length, dtype=torch.bool).tril()
            pos[row, start:end] = torch.arange(n, n + length)
    allowed |= torch.eye(width, dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None], pos


def score(
    lm: LoadedModel,
    items: list[MCItem],
    prompts: list[MCPrompt],
    *,
    site: str = "final",
    batch_size: int = 16,
    progress: bool = True,
) -> MCResult:
    """Log-likelihood of every choice continuation and the query embedding at ``site``."""
    import torch
    from tqdm.auto import tqdm

    site_obj = lm.parse_sites(site)
    if len(site_obj) != 1:
        raise RepdispError(f"give exactly one site for the query embedding, got {site!r}")
    site_obj = site_obj[0]
    bos = lm.bos_id
    read = sorted({site_obj, *lm.parse_sites("final")})
    packed = sorted(
        (_pack(lm.tokenizer, qi, p, bos) for qi, p in enumerate(prompts)), key=lambda p: -len(p.ids)
    )  # longest first: batches of similar length waste little padding
    limit = lm.max_len
    for p in packed if isinstance(limit, int) else ():
        need = p.n_ctx + max(length for _, length in p.blocks)  # the last position used, + 1
        if need > limit:
            raise RepdispError(
                f"question {p.qi}: its prompt and longest choice take {need} tokens, more than "
                f"the model's context of {limit}; use fewer --shots or shorter questions"
            )
    loglik = [np.zeros(len(p.continuations)) for p in prompts]
    emb = np.full((len(prompts), lm.d_model), np.nan, dtype=np.float32)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else (bos or 0)
    bar = tqdm(total=len(packed), unit="q", disable=not progress, desc=f"score {lm.name}")
    for b in range(0, len(packed), batch_size):
        batch = packed[b : b + batch_size]
        ids = torch.full((len(batch), len(batch[0].ids)), pad, dtype=torch.long)
        for row, p in enumerate(batch):
            ids[row, : len(p.ids)] = torch.tensor(p.ids)
        mask, pos_ids = _masks(batch, lm.dtype)
        # One row per scored token: (batch row, position predicting it, token, question, choice).
        rows, pos, tok, owner = [], [], [], []
        for row, p in enumerate(batch):
            for ci, positions, tokens in p.targets:
                rows += [row] * len(tokens)
                pos += positions
                tok += tokens
                owner += [(p.qi, ci)] * len(tokens)
        rows_t, pos_t = torch.tensor(rows), torch.tensor(pos)
        with lm.inference(), SiteReader(lm.model, read, stop_early=False) as reader:
            lm.model.base_model(
                input_ids=ids.to(lm.device),
                attention_mask=mask.to(lm.device),
                position_ids=pos_ids.to(lm.device),
                use_cache=False,
            )
            final, at_site = reader.values["final"], reader.values[site_obj.name]
            # token_nll scores ids[:, 1] from hidden[:, 0]: pack each scored token as one row.
            hid = final[rows_t, pos_t][:, None].expand(-1, 2, -1)
            tgt = torch.tensor(tok)[:, None].expand(-1, 2).to(lm.device)
            nll = token_nll(lm.model, hid, tgt)[:, 0].double().cpu().numpy()
            last_ctx = torch.tensor([p.n_ctx - 1 for p in batch])
            vecs = at_site[torch.arange(len(batch)), last_ctx].float().cpu().numpy()
        for (qi, ci), v in zip(owner, nll, strict=True):
            loglik[qi][ci] -= v
        for row, p in enumerate(batch):
            emb[p.qi] = vecs[row]
        bar.update(len(batch))
    bar.close()
    if not np.isfinite(emb).all():
        raise RepdispError(f"NaN/inf query embeddings at {site_obj.name} (overflow in {lm.dtype}?)")
    pred = np.array([int(np.argmax(ll)) for ll in loglik])
    norm = [
        ll / np.array([max(1, len(t.encode("utf-8"))) for t in p.choice_texts])
        for ll, p in zip(loglik, prompts, strict=True)
    ]
    pred_norm = np.array([int(np.argmax(v)) for v in norm])
    lengths = np.zeros(len(prompts), dtype=np.int64)
    for p in packed:
        lengths[p.qi] = len(p.ids)
    return MCResult(items, loglik, pred, pred_norm, emb, site_obj.name, lm.name, lengths)


@dataclass(frozen=True, kw_only=True)
class TaskSettings:
    """Which questions ``evaluate_task`` scores and how they are prompted: the prompt format
    ``fmt`` (None: the task's default), ``shots`` examples from ``shots_data``, a seeded random
    subset of ``limit`` items, and the ``columns`` of a ``jsonl`` task."""

    fmt: str | None = None
    shots: int = 0
    shots_data: str | None = None
    limit: int | None = None
    seed: int = 0
    columns: dict[str, Any] = field(default_factory=dict)


def evaluate_task(
    lm: LoadedModel,
    task: str,
    data: str,
    *,
    fmt: str | None = None,
    shots: int = 0,
    shots_data: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    site: str = "final",
    batch_size: int = 16,
    progress: bool = True,
    **columns: Any,
) -> MCResult:
    """Load, format and score a task; ``limit`` keeps a seeded random subset of that size. The
    keywords become a ``TaskSettings`` for ``run_evaluate_task``."""
    return run_evaluate_task(
        lm,
        task,
        data,
        TaskSettings(
            fmt=fmt, shots=shots, shots_data=shots_data, limit=limit, seed=seed, columns=columns
        ),
        site,
        batch_size,
        progress,
    )


def run_evaluate_task(
    lm: LoadedModel,
    task: str,
    data: str,
    settings: TaskSettings,
    site: str = "final",
    batch_size: int = 16,
    progress: bool = True,
) -> MCResult:
    """``evaluate_task`` on a ``TaskSettings`` (the commands call this)."""
    columns, shots, limit = settings.columns, settings.shots, settings.limit
    items = load_task(task, data, **columns)
    if limit is not None and limit < len(items):
        keep = np.sort(
            np.random.default_rng(settings.seed).choice(len(items), limit, replace=False)
        )
        items = [items[i] for i in keep]
    pool = (
        load_task(task, settings.shots_data, **columns) if shots and settings.shots_data else None
    )
    prompts = make_prompts(items, settings.fmt or default_format(task), shots, pool)
    return score(lm, items, prompts, site=site, batch_size=batch_size, progress=progress)
