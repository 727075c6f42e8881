"""Command groups of the CLI, one module each (``register(sub)``); shared options live in
``options`` (grouped by subject in ``option_groups``) and flag validators in ``checks``. Command
modules import nothing heavy at module level: the parser is built without torch, scipy,
transformers or matplotlib, and each command imports its work when it runs."""

from __future__ import annotations

from .options import model_from_args  # commands.reproduce imports it from here

__all__ = ["model_from_args"]
