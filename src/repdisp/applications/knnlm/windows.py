"""Token streams and sliding windows for the kNN-LM.

Text is read in sliding windows of ``context`` tokens moved by ``stride``; each window emits keys
(or scores) only for the targets no earlier window covered, so every target after the first is
predicted once, with at least ``context - stride`` tokens of context. A BOS token is prepended to
each window when the tokenizer adds one by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...core.corpus import Segments, load_texts, prepend_bos, token_stream
from ...core.errors import RepdispError
from ...core.loaded import check_window
from ...core.models import LoadedModel


def load_tokens(lm: LoadedModel, sources: list[str], **load_kwargs: Any) -> np.ndarray:
    """Token stream of one or more sources, each ``SOURCE`` or ``SOURCE@START:END`` (a token range
    of that source's stream), joined by EOS."""
    parts: list[np.ndarray] = []
    eos = lm.tokenizer.eos_token_id
    for spec in sources:
        source, start, end = spec, None, None
        head, sep, rng = spec.rpartition("@")
        if sep and ":" in rng and all(p.isdigit() or not p for p in rng.split(":", 1)):
            source = head
            a, b = rng.split(":", 1)
            start, end = (int(a) if a else None), (int(b) if b else None)
        stream = token_stream(lm.tokenizer, load_texts(source, **load_kwargs))[start:end]
        if parts and eos is not None:
            parts.append(np.array([eos], dtype=np.int64))
        parts.append(stream)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if len(tokens) < 2:
        raise RepdispError(f"data {', '.join(sources)} holds fewer than 2 tokens")
    return tokens


def plan_windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows ``(begin, end, first_new)`` over a stream: the window feeds tokens [begin, end)
    and scores the targets [first_new, end), each predicted from the token before it."""
    if context < 2:
        raise RepdispError(f"--context must be at least 2 tokens, got {context}")
    if not 1 <= stride <= context:
        raise RepdispError(f"--stride must be in [1, --context={context}], got {stride}")
    windows, covered, begin = [], 1, 0
    while True:
        end = min(begin + context, n_tokens)
        if end > max(covered, begin + 1):
            windows.append((begin, end, max(covered, begin + 1)))
        covered = max(covered, end)
        if end >= n_tokens:
            return windows
        begin += stride


def _batches(windows: list[tuple[int, int, int]], batch_size: int) -> list[list[int]]:
    """Consecutive window indices grouped into batches of equal window length."""
    out: list[list[int]] = []
    for i, (b, e, _) in enumerate(windows):
        if (
            out
            and len(out[-1]) < batch_size
            and windows[out[-1][0]][1] - windows[out[-1][0]][0] == e - b
        ):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _window_batch(
    tokens: np.ndarray, windows: list[tuple[int, int, int]], bos: int | None
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Input ids of equal-length windows and, per window, the position range of its new targets
    (position j predicts input token j + 1)."""
    ids = prepend_bos(np.stack([tokens[b:e] for b, e, _ in windows]), bos)
    p = int(bos is not None)
    return ids, [(n - b + p - 1, e - b + p - 1) for b, e, n in windows]


def chunk_windows(tokens: np.ndarray, chunk_len: int, bos: int | None, source: str) -> Segments:
    """All non-overlapping ``chunk_len`` windows of a token stream, as Segments (BOS prepended)."""
    n = len(tokens) // chunk_len
    if n < 2:
        raise RepdispError(f"{source}: fewer than 2 chunks of {chunk_len} tokens")
    ids = prepend_bos(tokens[: n * chunk_len].reshape(n, chunk_len), bos)
    return Segments(ids, np.arange(n), bos is not None, source)


def check_context(context: int, max_len: int | None, bos: int | None) -> None:
    """A window (plus its BOS) must fit the model's context length (``core.loaded.check_window``)."""
    check_window(context, max_len, bos, "--context")
