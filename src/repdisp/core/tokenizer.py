"""What repdisp reads from a tokenizer: its BOS behaviour and the EOS-joined token stream.

``bos_id``: the BOS id when the tokenizer adds one by default, decided by encoding a probe (the
``add_bos_token`` flag of converted GGUF tokenizers is unreliable). ``prepend_bos``: every window
fed to a model gets its BOS here (n, L) -> (n, L + 1), unchanged without one. ``token_stream``:
documents tokenised without special tokens, joined by EOS (as in pre-training), one int64 array.
Imports nothing of repdisp.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def bos_id(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer adds one by default (seen by encoding a probe), else None.

    Behaviour, not the ``add_bos_token`` flag, decides: converted GGUF tokenizers report the flag
    wrongly but still add the token. No tokenizer, or one without a BOS token: None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos if bos is not None and tokenizer("a").input_ids[:1] == [bos] else None


def prepend_bos(windows: np.ndarray, bos: int | None) -> np.ndarray:
    """Token windows (n, L) as int64 with ``bos`` in front of each (n, L + 1); unchanged when
    ``bos`` is None. Every window fed to a model gets its BOS here."""
    ids = np.asarray(windows, dtype=np.int64)
    if bos is None:
        return ids
    return np.concatenate([np.full((len(ids), 1), bos, dtype=np.int64), ids], axis=1)


def token_stream(tokenizer: Any, docs: list[str]) -> np.ndarray:
    """All documents tokenised without special tokens, joined by EOS, as one int64 array."""
    ids = tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]
    eos = tokenizer.eos_token_id
    parts: list[np.ndarray] = []
    for doc in ids:
        if parts and eos is not None:
            parts.append(np.array([eos], dtype=np.int64))
        parts.append(np.asarray(doc, dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
