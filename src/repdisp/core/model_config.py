"""Architecture facts of a model from its configuration only, never its weights.

``model_config(spec)`` reads config.json of a folder (a bundled model's converted cache), a
.gguf header, or the hub config (``AutoConfig``), and returns ``{"name", "architecture",
"n_blocks", "d_model"}`` - what ``repdisp sites`` prints and what commands check before loading.
A nested ``text_config`` (multimodal configs) is read in place of the outer one.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from .errors import RepdispError, first_line
from .gguf import check_magic
from .home import converted_dir
from .hub import hub_access, is_hub_id
from .registry import BUNDLED


def model_config(spec: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """Architecture facts of ``spec`` from its configuration only, never its weights:
    ``{"name", "architecture", "n_blocks", "d_model"}``. Reads config.json of a folder (a bundled
    model's converted cache), a .gguf header, or the hub config (AutoConfig)."""
    path = Path(spec).expanduser()
    if spec in BUNDLED and (converted_dir(spec) / "config.json").exists():
        path = converted_dir(spec)
    elif spec in BUNDLED:
        gguf = BUNDLED[spec].gguf_path()
        if gguf is None:
            raise RepdispError(
                f"bundled model {spec!r} is not installed: run `{BUNDLED[spec].install}`"
            )
        path = gguf
    if path.is_dir():
        if not (path / "config.json").exists():
            raise RepdispError(f"folder {path} has no config.json: not a transformers model folder")
        try:
            cfg = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise RepdispError(f"cannot read {path / 'config.json'}: {first_line(e)}") from e
    elif path.is_file() and path.suffix == ".gguf":
        check_magic(path)
        from gguf import GGUFReader

        try:
            fields = GGUFReader(str(path)).fields
            arch = bytes(fields["general.architecture"].parts[-1]).decode()
            cfg = {
                "model_type": arch,
                "num_hidden_layers": int(fields[f"{arch}.block_count"].parts[-1][0]),
                "hidden_size": int(fields[f"{arch}.embedding_length"].parts[-1][0]),
            }
        except (KeyError, ValueError, IndexError, struct.error) as e:
            raise RepdispError(f"cannot read the GGUF header of {path}: {first_line(e)}") from e
    elif path.exists():
        raise RepdispError(f"{spec} is a file but not a .gguf; pass a model folder or a .gguf file")
    elif not is_hub_id(spec):
        raise RepdispError(
            f"unknown model {spec!r}: not a bundled name ({', '.join(BUNDLED)}), an existing folder "
            "or .gguf file, or a hub id (name or org/name)"
        )
    else:
        access = hub_access(spec)  # fails in seconds when the hub is unreachable
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(
                spec, trust_remote_code=trust_remote_code, **access
            ).to_dict()
        except Exception as e:  # network, auth, no such repo
            raise RepdispError(f"cannot read the config of {spec!r}: {first_line(e)}") from e
    cfg = cfg.get("text_config") or cfg
    n = next((cfg[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if k in cfg), None)
    d = next((cfg[k] for k in ("hidden_size", "n_embd", "d_model") if k in cfg), None)
    if not isinstance(n, int):
        raise RepdispError(f"{spec}: the config does not say how many blocks the model has")
    arch = (cfg.get("architectures") or [cfg.get("model_type", "unknown")])[0]
    return {"name": spec, "architecture": arch, "n_blocks": n, "d_model": d}
