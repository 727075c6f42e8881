"""Checkpoints ranked by the gap G against their domain accuracy (§3.2, Tables 3-4).

A checkpoint's G is read from its output-embedding rows only (``rows.EmbeddingRows``: a
safetensors slice, a GGUF tensor's rows, byte ranges behind a URL or hub id; no model object is
built). Its accuracy is the user's number (a model card, lm-eval), or, when none is given, it
is measured here as domain perplexity, which needs the model:

    ppl = exp( Σ_w Σ_{t=2..L} −log p(x_t | x_<t) / (W·(L−1)) )

over the first W non-overlapping windows of L tokens of the domain text (its documents
tokenised by the checkpoint's own tokenizer, without special tokens, joined by EOS; the first
token of a window is context only). Lower perplexity is better, so a measured checkpoint ranks
by −ppl (``accuracy`` = −ppl), and a rank correlation of G with −ppl reads as one with
accuracy.

``gap_of`` gives one checkpoint's gap components (cosine and Euclidean); ``domain_texts`` the
documents (``a+b`` joins two fields of each record); ``domain_perplexity`` the measurement.
"""

from __future__ import annotations

import math
from typing import Any

from ...core.errors import RepdispError
from .analysis import CheckpointGap, checkpoint_gap
from .words import DOMAINS, REFERENCES, load_words


def gap_of(
    spec: str, domain: str, reference: str, tokenizers: dict[str, Any] | None = None
) -> tuple[CheckpointGap, str]:
    """Gap components of ``spec`` (rows only) and its tokenizer key (``tokenizer_key``)."""
    from .rows import EmbeddingRows

    dom, ref = load_words(domain, DOMAINS), load_words(reference, REFERENCES)
    src = EmbeddingRows(spec)
    return checkpoint_gap(src, dom, ref, tokenizers), src.tokenizer_key()


def domain_texts(data: str, text_field: str = "text") -> list[str]:
    """Documents of a source; ``a+b`` concatenates two fields of every record."""
    from ...core.corpus import load_texts

    parts = [load_texts(data, f) for f in text_field.split("+")]
    if len({len(p) for p in parts}) > 1:
        raise RepdispError(f"{data}: fields {text_field!r} have different numbers of records")
    docs = ["".join(t) for t in zip(*parts, strict=True)]
    if not docs:
        raise RepdispError(f"{data}: no documents")
    return docs


def domain_perplexity(
    lm: Any, docs: list[str], seq_len: int, windows: int, batch_size: int = 8
) -> dict[str, Any]:
    """Perplexity of a ``LoadedModel`` over the first ``windows`` windows (module docstring)."""
    import torch

    from ...core.corpus import token_stream

    if seq_len < 2 or windows < 1:
        raise RepdispError(
            f"perplexity needs seq_len >= 2 and windows >= 1, got {seq_len}, {windows}"
        )
    stream = token_stream(lm.tokenizer, docs)
    n = min(windows, len(stream) // seq_len)
    if n < 1:
        raise RepdispError(f"the domain text has {len(stream)} tokens: not one window of {seq_len}")
    ids = torch.as_tensor(stream[: n * seq_len].reshape(n, seq_len))
    nll = 0.0
    with torch.inference_mode(), lm.inference():
        for i in range(0, n, batch_size):
            x = ids[i : i + batch_size].to(lm.device)
            logits = lm.model(input_ids=x, use_cache=False).logits[:, :-1].double()
            nll += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
                )
            )
    tokens = n * (seq_len - 1)
    return {
        "ppl": math.exp(nll / tokens),
        "nll": nll / tokens,
        "windows": n,
        "windows_available": int(len(stream) // seq_len),
        "tokens": tokens,
    }


def accuracy_of(entry: dict[str, Any]) -> float:
    """What ranks a checkpoint: the given accuracy, else −ppl (lower perplexity is better)."""
    acc = entry.get("accuracy")
    return float(acc) if acc is not None else -float(entry["ppl"])


def components(gap: CheckpointGap) -> dict[str, Any]:
    """A checkpoint's gap as a flat row (both metrics)."""
    return {k: v for k, v in gap.row().items() if k != "accuracy"} | {
        "matrix_shape": list(gap.matrix_shape),
        "tied": gap.tied,
    }


__all__ = ["accuracy_of", "components", "domain_perplexity", "domain_texts", "gap_of"]
