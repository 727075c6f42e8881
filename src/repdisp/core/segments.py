"""Fixed-length token segments of a text source, sampled reproducibly (``make_segments``).

Every document is tokenised without special tokens; documents are joined into one stream with
the tokenizer's EOS token between them (as in pre-training) and the stream is cut into
non-overlapping windows of ``seq_len`` tokens, of which ``n_segments`` are drawn without
replacement with ``numpy.random.default_rng(seed)`` (all of them, in order, when None). When the
tokenizer adds a BOS token by default (Gemma, Llama-2/3), it is prepended to every segment, so
the model sees the input it was trained on; perplexity is then over all ``seq_len`` tokens, and
the BOS position is never pooled. Without a BOS the first segment token is only context
(perplexity covers ``seq_len - 1`` tokens). A segment (with its BOS) longer than the model's
context is refused by the one rule ``core.loaded.check_window``. The stream is cached by content
(``core.tokcache``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import RepdispError
from .loaded import check_window
from .texts import data_name, load_texts
from .tokcache import cached_stream
from .tokenizer import bos_id, prepend_bos, token_stream


@dataclass
class Segments:
    """Sampled token segments (N, seq_len [+1 with BOS]) and where they came from.

    Attributes
    ----------
    ids : ndarray of shape (N, L), int64
        Token ids fed to the model, BOS first when ``has_bos``.
    index : ndarray of shape (N,)
        Window index (or start) of each segment in the source's token stream.
    has_bos : bool
    source : str

    Examples
    --------
    >>> import numpy as np
    >>> from repdisp import Segments
    >>> segs = Segments(np.arange(12).reshape(3, 4), np.arange(3), False, "toy")
    >>> len(segs), len(segs.fingerprint)
    (3, 16)
    """

    ids: np.ndarray
    index: np.ndarray  # window index of each segment in the source stream
    has_bos: bool
    source: str

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fingerprint(self) -> str:
        """Hash of the exact token ids: identifies data, tokenizer, seq_len, sampling and BOS."""
        return hashlib.sha256(np.ascontiguousarray(self.ids).tobytes()).hexdigest()[:16]


def make_segments(
    tokenizer: Any,
    source: Any,
    n_segments: int | None,
    seq_len: int,
    seed: int = 0,
    docs: list[str] | None = None,
    max_len: int | None = None,
    cache: bool = True,
    **load_kwargs: Any,
) -> Segments:
    """Sample ``n_segments`` windows of ``seq_len`` tokens (all of them when None), seeded.

    The documents are tokenised without special tokens and joined by EOS; the stream is cut
    into non-overlapping windows, ``n_segments`` of which are drawn without replacement
    (``seed``); BOS is prepended when the tokenizer adds one by default. The stream is
    tokenised once per (tokenizer, documents) and cached by content (``core.tokcache``; on
    disk unless ``cache=False``).

    Parameters
    ----------
    tokenizer : transformers tokenizer
    source : str or sequence of str
        Data source or texts in memory (see ``load_texts``); read unless ``docs`` is given.
    n_segments : int or None
    seq_len : int
    seed : int
    docs : list of str, optional
    max_len : int, optional
        The model's context length (``LoadedModel.max_len``); a segment that with its BOS is
        longer is refused (``core.loaded.check_window``).

    Returns
    -------
    Segments

    Examples
    --------
    >>> from repdisp import load_model, make_segments
    >>> lm = load_model("smollm2-135m")  # doctest: +SKIP
    >>> segs = make_segments(lm.tokenizer, "python-docs", 8, 32, max_len=lm.max_len)  # doctest: +SKIP
    >>> segs.ids.shape  # doctest: +SKIP
    (8, 32)
    """
    if seq_len < 2:
        raise RepdispError(f"--seq-len must be at least 2 tokens, got {seq_len}")
    bos = bos_id(tokenizer)
    check_window(seq_len, max_len, bos, "--seq-len")
    if n_segments is not None and n_segments < 2:
        raise RepdispError(f"--segments must be at least 2 to measure dispersion, got {n_segments}")

    docs = docs if docs is not None else load_texts(source, **load_kwargs)
    name = data_name(source)
    stream = cached_stream(tokenizer, docs, token_stream, cache=cache)
    n_windows = len(stream) // seq_len
    if n_windows == 0:
        raise RepdispError(
            f"data {name!r} has {len(stream)} tokens, fewer than one segment of {seq_len}"
        )
    if n_segments is not None and n_segments > n_windows:
        raise RepdispError(
            f"data {name!r} has only {n_windows} segments of {seq_len} tokens; ask for at most "
            f"--segments {n_windows} or a shorter --seq-len"
        )
    windows = stream[: n_windows * seq_len].reshape(n_windows, seq_len)
    index = np.arange(n_windows)
    if n_segments is not None:
        index = np.sort(np.random.default_rng(seed).choice(n_windows, n_segments, replace=False))
    return Segments(prepend_bos(windows[index], bos), index, bos is not None, name)
