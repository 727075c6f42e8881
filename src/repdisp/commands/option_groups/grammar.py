"""The CLI's shared grammar pieces: ``HelpFormatter`` (every default shown one way,
``(default: X)``), ``Parser``, and the repeatable-option actions ``ListAction`` (comma lists,
``--site a,b --site c`` is three values) and ``AppendAction`` (no splitting: paths may hold
commas). In both actions the first use replaces the default. Standard library only."""

from __future__ import annotations

import argparse
from typing import Any


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option whose default is a value (not None, not a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and "(default: " not in text
            and not any(default is x for x in (None, False, True, argparse.SUPPRESS))
            and action.nargs != 0
        ):
            if isinstance(default, (list, tuple)):
                default = ",".join(str(x) for x in default)
            text += f" (default: {str(default).replace('%', '%%')})"
        return text


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose sub-parsers and help all use ``HelpFormatter``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


class ListAction(argparse.Action):
    """Repeatable option whose values may also be comma lists; the first use replaces the default.

    ``--site a,b --site c`` -> ["a", "b", "c"].
    """

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        current = getattr(namespace, self.dest, None)
        if current is None or current is self.default:
            current = []
        items = [x.strip() for x in str(values).split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentError(self, "expected a value, got an empty list")
        setattr(namespace, self.dest, [*current, *items])


class AppendAction(argparse.Action):
    """Repeatable option (no comma splitting: paths and specs may hold commas); the first use
    replaces the default."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        current = getattr(namespace, self.dest, None)
        if current is None or current is self.default:
            current = []
        setattr(namespace, self.dest, [*current, values])
