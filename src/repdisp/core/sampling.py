"""How segments are drawn and extracted (``Sampling``), shared by the §2 analyses and training.

``Sampling.run`` draws the same segments for every model (same seed: ``core.segments.make_segments``)
and makes one extraction pass (``core.extract.extract``) over them; ``loaded`` accepts a model
object or a spec string.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .extract import Extraction, extract
from .loaded import LoadedModel
from .loading import as_loaded, load_model
from .segments import Segments, make_segments
from .texts import load_texts

ModelLike = str | LoadedModel | tuple


@dataclass
class Sampling:
    """How segments are drawn and extracted; shared by every binned analysis."""

    segments: int = 600
    seq_len: int = 128
    seed: int = 0
    batch_size: int = 8
    skip_first: int = 1
    cache: bool = True
    progress: bool = True
    text_field: str = "text"
    encoding_errors: str = "strict"
    split: str | None = None  # of an ``hf:`` source (default ``test``)
    trust_remote_code: bool = False  # let an ``hf:`` dataset run its loading script

    def run(
        self,
        lm: LoadedModel,
        data: str,
        sites: str | list[str],
        pools: list[str],
        docs: list[str] | None = None,
        seq_len: int | None = None,
        dist: Any = None,
    ) -> tuple[Segments, Extraction]:
        """Sample the segments (same seed for every model) and run one extraction pass
        (shared by the processes of ``dist``, gathered on its rank 0: ``extract``)."""
        segs = self.sample(lm, data, docs, seq_len)
        return segs, self.extract(lm, segs, sites, pools, dist=dist)

    def sample(
        self,
        lm: LoadedModel,
        data: str,
        docs: list[str] | None = None,
        seq_len: int | None = None,
    ) -> Segments:
        """The segments of ``data`` for ``lm``'s tokenizer (seeded: the same for every model)."""
        if docs is None:
            docs = self.texts(data)
        n, length = self.segments, seq_len or self.seq_len
        return make_segments(
            lm.tokenizer, data, n, length, self.seed, docs, lm.max_len, cache=self.cache
        )

    def texts(self, data: str) -> list[str]:
        """The documents of ``data`` read with these text options (``core.texts.load_texts``)."""
        return load_texts(
            data, self.text_field, self.split, self.encoding_errors, self.trust_remote_code
        )

    def extract(
        self,
        lm: LoadedModel,
        segs: Segments,
        sites: str | list[str],
        pools: str | list[str],
        dist: Any = None,
    ) -> Extraction:
        """One extraction pass over ``segs`` with perplexity and these settings."""
        return extract(
            lm,
            segs,
            sites,
            pools,
            perplexity=True,
            batch_size=self.batch_size,
            skip_first=self.skip_first,
            cache=self.cache,
            progress=self.progress,
            dist=dist,
        )


def loaded(model: ModelLike, load: Callable[[str], LoadedModel] = load_model) -> LoadedModel:
    """The model itself, ``(hf_model, tokenizer)`` wrapped, or ``load(spec)`` for a spec string."""
    if isinstance(model, tuple):
        return as_loaded(model)
    return model if isinstance(model, LoadedModel) else load(model)
