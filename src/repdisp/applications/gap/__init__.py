"""Dispersion gap for model selection (§3.2): rank checkpoints from one weight matrix.

Only the output-embedding matrix is read (``lm_head.weight``; the input embeddings when they are
tied), and only the rows of the tokens used (``rows``; GGUF headers through ``core.gguf``). No
model object is built and nothing is run through the network.

Token sets (``words``): a domain set T and a reference set T' (everyday words by default), given as
words, each mapped to one token id of the checkpoint's own tokenizer.

Per checkpoint, for cosine distance (the paper's metric) and Euclidean distance (``distances``):

    within(T)       mean pairwise distance among the domain rows (i < j)
    within(T')      the same among the reference rows
    between(T, T')  mean distance over all pairs (t in T, t' in T')
    G               within(T) + between(T, T')

``analysis`` ranks the checkpoints by G and correlates G with given accuracies.
"""

from .analysis import (
    CheckpointGap,
    GapResult,
    checkpoint_gap,
    parse_accuracy,
    plot_gap,
    rank_by_gap,
)
from .distances import METRICS, GapComponents, cosine_between, gap_components
from .rows import EmbeddingRows, _matrix_shape
from .words import DOMAINS, REFERENCES, TokenSet, load_words, token_set

__all__ = [
    "DOMAINS",
    "METRICS",
    "REFERENCES",
    "CheckpointGap",
    "EmbeddingRows",
    "GapComponents",
    "GapResult",
    "TokenSet",
    "_matrix_shape",
    "checkpoint_gap",
    "cosine_between",
    "rank_by_gap",
    "gap_components",
    "load_words",
    "parse_accuracy",
    "plot_gap",
    "token_set",
]


def __getattr__(name: str):  # PEP 562: ``repdisp.PACKAGE.MODULE`` without importing it first
    import importlib
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
