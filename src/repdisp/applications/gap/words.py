"""Token sets for the dispersion gap: built-in word lists and their mapping to single token ids.

Each word maps to ONE token id through the checkpoint's own tokenizer: `` word`` (with a leading
space, how words appear inside text) if that is a single token, else ``word`` if that is; words
that are several tokens either way are skipped and counted (``skipped``). Duplicate ids count once.
"""

from __future__ import annotations

import builtins
import keyword
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import RepdispError

_LEGAL = """plaintiff defendant court judge jury verdict statute contract tort liability
negligence appeal appellate counsel attorney lawyer litigation lawsuit damages injunction
jurisdiction precedent testimony witness evidence hearing trial indictment prosecution
prosecutor felony misdemeanor sentence parole probation custody warrant subpoena affidavit
deposition settlement arbitration mediation clause breach remedy covenant easement lease
landlord tenant copyright patent trademark infringement fraud perjury bail acquittal
conviction habeas amendment constitution legislation regulation ordinance enforcement
compliance fiduciary trustee estate probate heir plea guilty innocent lawful unlawful legal
illegal rights claim claimant respondent petitioner petition motion docket ruling
statutory liable indemnity"""

_EVERYDAY = """house water food table chair door window car street city tree dog cat bird
book paper phone friend family mother father child school work money time day night morning
evening week year today tomorrow yesterday home room bed kitchen bread milk coffee tea apple
sugar salt shirt shoe hat coat rain snow sun wind cold hot warm happy sad good bad big small
long short new old young fast slow walk run eat drink sleep talk read write sing play cook
clean buy sell open close give take come go see look hear listen feel think know want like
love help start stop wait ask answer call live music movie game ball garden park shop store
market bus train road bridge river hill sea beach flower grass color red blue green white
black light dark hand head face eye ear mouth hair foot leg heart smile laugh"""

DOMAINS = {
    "digits": [str(i) for i in range(100)],
    "python": sorted(
        set(keyword.kwlist)
        | {n for n in dir(builtins) if n.islower() and not n.startswith("_") and n.isalpha()}
    ),
    "legal": _LEGAL.split(),
}
REFERENCES = {"everyday": _EVERYDAY.split()}

_HEAD_KEYS = ("lm_head.weight", "embed_out.weight", "output.weight")
_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")


def load_words(spec: str, builtin: dict[str, list[str]]) -> tuple[str, list[str]]:
    """A built-in list name or a text file (whitespace- or line-separated words)."""
    if spec in builtin:
        return spec, builtin[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise RepdispError(f"word list {spec!r}: not built in ({', '.join(builtin)}) nor a file")
    words = path.read_text(encoding="utf-8").split()
    if not words:
        raise RepdispError(f"word list {path} is empty")
    return path.stem, words


@dataclass
class TokenSet:
    name: str
    ids: np.ndarray
    words: list[str]  # the word kept for each id
    skipped: list[str] = field(default_factory=list)  # multi-token words


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids without special tokens, from a ``tokenizers.Tokenizer`` or a transformers one."""
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        return tokenizer.encode(text, add_special_tokens=False).ids
    return tokenizer(text, add_special_tokens=False).input_ids


def token_set(tokenizer: Any, name: str, words: list[str]) -> TokenSet:
    """Map words to single token ids (`` word`` first, then ``word``); skip multi-token words."""
    ids: list[int] = []
    kept: list[str] = []
    skipped: list[str] = []
    for w in dict.fromkeys(words):
        for variant in (" " + w, w):
            enc = _encode(tokenizer, variant)
            if len(enc) == 1:
                if enc[0] not in ids:
                    ids.append(enc[0])
                    kept.append(w)
                break
        else:
            skipped.append(w)
    if len(ids) < 2:
        raise RepdispError(f"token set {name!r} has {len(ids)} single-token words; need 2+")
    return TokenSet(name, np.array(ids, dtype=np.int64), kept, skipped)
