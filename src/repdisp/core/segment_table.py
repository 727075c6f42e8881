"""Per-segment values of one extraction as rows (the ``--save-segments`` Parquet table).

A row per segment: its id, its source and token offset in the source's token stream, its
perplexity exp(mean NLL), its mean and last-token NLL, and per site the within-segment dispersion
(when the ``within`` pooling was extracted) and the per-example dispersion score, the mean cosine
distance of its pooled vector to the other segments' (``geometry.per_example_scores``, O(N·d)).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .corpus import Segments
from .extract import Extraction
from .geometry import per_example_scores


def segment_rows(ex: Extraction, segs: Segments, across: str = "last") -> list[dict[str, Any]]:
    """One row per segment: its id, source and token offset in the source's token stream, its
    perplexity (exp of its mean NLL), mean and last-token NLL, and per site its within-segment
    dispersion (when extracted) and its per-example dispersion score: the mean cosine distance of
    its ``across``-pooled vector to the other segments' (``core.geometry.per_example_scores``)."""
    seq_len = segs.ids.shape[1] - int(segs.has_bos)
    rows: list[dict[str, Any]] = [
        {
            "segment": i,
            "source": segs.source,
            "token_offset": int(segs.index[i]) * seq_len,
            "ppl": float(np.exp(ex.mean_nll[i])),
            "mean_nll": float(ex.mean_nll[i]),
            "last_token_nll": float(ex.last_nll[i]),
        }
        for i in range(len(segs))
    ]
    for site in ex.sites:
        if f"{site}/within" in ex.vectors:
            for row, v in zip(rows, ex.get(site, "within"), strict=True):
                row[f"within_dispersion@{site}"] = float(v)
        if f"{site}/{across}" in ex.vectors:
            scores = per_example_scores(ex.get(site, across))
            for row, v in zip(rows, scores, strict=True):
                row[f"score@{site}"] = float(v)
    return rows
