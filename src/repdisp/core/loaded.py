"""``LoadedModel``: a model ready for extraction, with the facts every caller reads from it.

A LoadedModel holds the torch model, its tokenizer, a display name, the ``identity`` that keys
every cache (a content hash, see ``core.identity``), the device, the weights' dtype and, for
``bf16-mixed``, the autocast dtype. ``n_blocks``, ``bos_id``, ``max_len``, ``d_model`` and
``parse_sites`` are read here once, so no caller looks into the config itself.

The context-length rule (``check_window``, also ``LoadedModel.check_window``): a window of
``tokens`` tokens is fed with the model's BOS in front when it has one, so it needs
``tokens + (1 if BOS else 0) <= max_len`` (``max_position_embeddings``); a model whose config
gives no length is not limited. ``make_segments``, ``--context`` and ``--chunk-len`` all use it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .errors import RepdispError
from .precision import MIXED
from .sites import Site, blocks_of, check_sites, parse_sites
from .tokenizer import bos_id


def check_window(
    tokens: int, max_len: int | None, bos: int | None, flag: str = "--seq-len"
) -> None:
    """Refuse a window of ``tokens`` tokens (plus the BOS when ``bos`` is not None) longer than
    ``max_len``; one line naming ``flag``. ``max_len`` None: no limit."""
    need = tokens + int(bos is not None)
    if isinstance(max_len, int) and need > max_len:
        extra = " plus the BOS" if bos is not None else ""
        raise RepdispError(
            f"{flag} {tokens}{extra} exceeds the model's context of {max_len} tokens"
        )


@dataclass
class LoadedModel:
    """A model ready for extraction, with what identifies it in cache keys.

    The facts callers need (``n_blocks``, ``bos_id``, ``max_len``, ``d_model``,
    ``parse_sites``) are read from the model and its tokenizer here, once.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from repdisp import LoadedModel, Segments, extract
    >>> cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50,
    ...                  bos_token_id=0, eos_token_id=0)
    >>> net = GPT2LMHeadModel(cfg).eval()
    >>> lm = LoadedModel(net, None, "tiny", "tiny-doc", torch.device("cpu"), torch.float32)
    >>> lm.n_blocks, lm.d_model, lm.max_len
    (2, 16, 1024)
    >>> lm.check_window(1024)  # no BOS: a window may fill the context
    >>> lm.check_window(1025, "--context")
    Traceback (most recent call last):
    ...
    repdisp.core.errors.RepdispError: --context 1025 exceeds the model's context of 1024 tokens
    >>> [s.name for s in lm.parse_sites("-1.attn,final")]
    ['1.attn', 'final']
    """

    model: Any
    tokenizer: Any
    name: str
    identity: str
    device: Any
    dtype: Any
    autocast: Any = None  # a torch dtype: the forward runs under torch.autocast with it

    def inference(self) -> Any:
        """The context every forward of this model runs in: ``torch.inference_mode`` and, for
        ``bf16-mixed``, ``torch.autocast`` to bfloat16 on the model's device type."""
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.autocast is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.autocast))
        return stack

    @property
    def precision(self) -> str:
        """``--dtype`` as run: ``bf16-mixed`` under autocast, else the weights' dtype name."""
        return MIXED if self.autocast is not None else str(self.dtype).replace("torch.", "")

    @property
    def n_blocks(self) -> int:
        """Number of decoder blocks."""
        return len(blocks_of(self.model))

    @cached_property
    def bos_id(self) -> int | None:
        """The BOS id when the tokenizer adds one by default, else None (``tokenizer.bos_id``)."""
        return bos_id(self.tokenizer)

    @property
    def max_len(self) -> int | None:
        """Context length in tokens (``max_position_embeddings``), None when the config has none."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def check_window(self, tokens: int, flag: str = "--seq-len") -> None:
        """Refuse windows of ``tokens`` tokens that, with this model's BOS, overrun ``max_len``
        (``check_window``: the one context-length rule)."""
        check_window(tokens, self.max_len, self.bos_id, flag)

    @property
    def d_model(self) -> int:
        """Width of the residual stream (``hidden_size``)."""
        return int(self.model.config.hidden_size)

    def parse_sites(self, specs: str | list[str]) -> list[Site]:
        """``core.sites.parse_sites`` with this model's number of blocks; sites this architecture
        cannot locate are refused here (``core.sites.check_sites``), before any work."""
        sites = parse_sites(specs, self.n_blocks)
        check_sites(self.model.config, sites)
        return sites
