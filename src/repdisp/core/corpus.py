"""Text sources into token segments: the older single home of these names, re-exported.

``core.texts`` reads documents (``load_texts``), ``core.tokenizer`` holds the tokenizer facts
(``bos_id``, ``prepend_bos``, ``token_stream``) and ``core.segments`` samples the windows
(``Segments``, ``make_segments``); ``from repdisp.core.corpus import X`` keeps working.
"""

from __future__ import annotations

from .segments import Segments, make_segments
from .texts import BUILTIN_SOURCES, DATA_SUFFIXES, DEFAULT_SPLIT, load_texts
from .tokenizer import bos_id, prepend_bos, token_stream

__all__ = [
    "BUILTIN_SOURCES",
    "DATA_SUFFIXES",
    "DEFAULT_SPLIT",
    "Segments",
    "bos_id",
    "load_texts",
    "make_segments",
    "prepend_bos",
    "token_stream",
]
