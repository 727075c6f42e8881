"""Labels of data sources and models in legends and tables."""

from __future__ import annotations

from pathlib import Path


def short_name(data: str) -> str:
    """A data source's label for legends: the file stem, or the name as given."""
    return Path(data).stem if ("/" in data or "." in data) and not data.startswith("hf:") else data


def model_label(name: str) -> str:
    """A model's label for plots: a folder's last component, or the name as given."""
    return Path(name).name if "/" in name else name
