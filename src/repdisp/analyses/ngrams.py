"""Frequent n-grams of a token-id stream, found with a vectorised rolling hash (no per-position
Python objects), with every reported n-gram verified exactly against the stream.

Each window of n tokens gets the polynomial hash sum_j (x_{i+j}+1)·B^(n-1-j) mod 2^64 (B a fixed
odd 64-bit constant; numpy uint64 arithmetic wraps, which is the mod). The hashes of all windows
come from n vectorised multiply-adds over the whole stream, i.e. O(n·T) work in C. A counting
pass over the top hash bits (np.bincount, linear) drops every window whose bucket holds fewer than
``min_count`` windows (a bucket count bounds the true count from above, so nothing frequent is
lost); only the survivors are sorted. A stable argsort groups equal hashes (positions stay
ascending inside a group), groups with at least ``min_count`` windows are candidates, and every
candidate window is compared token by token with its group's first window; a group that a hash
collision merged is split by exact n-gram.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.errors import RepdispError

_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplication by it is invertible mod 2^64


@dataclass
class NgramCounts:
    """N-grams occurring at least ``min_count`` times, most frequent first (ties: first seen).

    ``positions(k)`` gives the ascending start positions of n-gram k in the stream; occurrences
    may overlap (as a naive sliding counter counts them)."""

    n: int
    min_count: int
    n_tokens: int
    ngrams: np.ndarray  # (K, n) token ids
    counts: np.ndarray  # (K,)
    offsets: np.ndarray = field(repr=False)  # (K+1,) into starts
    starts: np.ndarray = field(repr=False)  # concatenated positions, grouped by n-gram

    def __len__(self) -> int:
        return len(self.counts)

    def positions(self, k: int) -> np.ndarray:
        return self.starts[self.offsets[k] : self.offsets[k + 1]]

    def as_dict(self) -> dict[tuple[int, ...], np.ndarray]:
        """{n-gram tuple: positions}, for inspection and tests (small results only)."""
        return {tuple(int(t) for t in g): self.positions(k) for k, g in enumerate(self.ngrams)}


def window_hashes(stream: np.ndarray, n: int) -> np.ndarray:
    """uint64 polynomial hash of every length-n window (len(stream) - n + 1 values)."""
    x = np.asarray(stream).astype(np.uint64) + np.uint64(1)
    m = len(x) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    for j in range(n):
        h *= _BASE
        h += x[j : j + m]
    return h


def _exact_groups(windows: np.ndarray, pos: np.ndarray, min_count: int) -> list[np.ndarray]:
    """Split one hash group's positions by exact n-gram (only needed after a hash collision)."""
    _, inverse = np.unique(windows[pos], axis=0, return_inverse=True)
    inverse = inverse.ravel()
    groups = [pos[inverse == g] for g in range(inverse.max() + 1)]
    return [g for g in groups if len(g) >= min_count]


def mine_ngrams(stream: np.ndarray, n: int, min_count: int) -> NgramCounts:
    """All n-grams of ``stream`` (1-D token ids) occurring at least ``min_count`` times."""
    stream = np.ascontiguousarray(stream, dtype=np.int64)
    if stream.ndim != 1:
        raise RepdispError(f"expected a 1-D token stream, got shape {stream.shape}")
    if n < 1 or min_count < 1:
        raise RepdispError(f"--ngram and --min-count must be at least 1 (got {n}, {min_count})")
    empty = NgramCounts(
        n, min_count, len(stream), np.zeros((0, n), np.int64), np.zeros(0, np.int64),
        np.zeros(1, np.int64), np.zeros(0, np.int64),
    )  # fmt: skip
    if len(stream) < n:
        return empty
    h = window_hashes(stream, n)
    # linear pre-filter: a window whose hash bucket holds < min_count windows cannot be frequent
    bits = int(np.clip(np.ceil(np.log2(len(h))) + 1, 8, 24))
    bucket = (h >> np.uint64(64 - bits)).astype(np.intp)
    cand = np.flatnonzero(np.bincount(bucket, minlength=1 << bits)[bucket] >= min_count)
    order = cand[np.argsort(h[cand], kind="stable")]
    hs = h[order]
    bounds = np.flatnonzero(np.diff(hs)) + 1
    run_len = np.diff(np.concatenate([[0], bounds, [len(hs)]]))
    keep = run_len >= min_count
    if not keep.any():
        return empty
    pos = order[np.repeat(keep, run_len)]  # candidate positions, grouped by hash, ascending
    run_len = run_len[keep]
    ends = np.cumsum(run_len)
    first = np.repeat(pos[ends - run_len], run_len)
    windows = np.lib.stride_tricks.sliding_window_view(stream, n)
    same = (windows[pos] == windows[first]).all(axis=1)
    gid = np.repeat(np.arange(len(run_len)), run_len)
    bad = np.unique(gid[~same])
    ok = np.ones(len(run_len), dtype=bool)
    ok[bad] = False
    sel = ok[gid]
    labels = [(np.cumsum(ok) - 1)[gid[sel]]]
    found = [pos[sel]]
    counts = [run_len[ok]]
    for g in bad:  # hash collisions: astronomically rare, handled exactly anyway
        for grp in _exact_groups(windows, pos[ends[g] - run_len[g] : ends[g]], min_count):
            labels.append(np.full(len(grp), int(ok.sum()) + len(counts) - 1))
            found.append(grp)
            counts.append(np.array([len(grp)]))
    label, found, count = (np.concatenate(a).astype(np.int64) for a in (labels, found, counts))
    if not len(count):
        return empty
    by_label = np.argsort(label, kind="stable")  # positions stay ascending inside each n-gram
    label, found = label[by_label], found[by_label]
    offsets = np.concatenate([[0], np.cumsum(count)])
    firsts = found[offsets[:-1]]
    rank = np.lexsort((firsts, -count))  # most frequent first, ties by first occurrence
    new_label = np.empty_like(rank)
    new_label[rank] = np.arange(len(rank))
    found = found[np.argsort(new_label[label], kind="stable")]
    count = count[rank]
    return NgramCounts(
        n=n,
        min_count=min_count,
        n_tokens=len(stream),
        ngrams=windows[firsts[rank]].copy(),
        counts=count,
        offsets=np.concatenate([[0], np.cumsum(count)]),
        starts=found,
    )
