"""Where repdisp keeps its files: ``$REPDISP_HOME`` (default ``~/.cache/repdisp``).

Converted models live in ``models/NAME``, token streams in ``tokens/``, extraction shards in
``runs/``, remembered file hashes in ``file-hashes.json``. The root is read from the environment
on every call, so a test or a launcher that sets ``REPDISP_HOME`` late still takes effect.
Standard library only; imports nothing of repdisp.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Where repdisp keeps converted models and extraction shards ($REPDISP_HOME)."""
    return Path(os.environ.get("REPDISP_HOME", Path.home() / ".cache" / "repdisp"))


def converted_dir(name: str) -> Path:
    """Folder of the converted (safetensors) copy of model ``name``."""
    return cache_root() / "models" / name
