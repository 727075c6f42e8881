"""The package's layers: every import inside src/repdisp points down (or within its own folder).

    core  <  io  <  analyses | applications | training  <  reproduce  <  commands  <  cli

``analyses``, ``applications`` and ``training`` never import one another; shared needs live in
``core`` or ``io``. ``reproduce`` (the paper's grid) may use all of them; nothing below it may
import it. Imports are read from the source with ``ast`` (deferred imports inside
functions included), so a lazy upward import fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "repdisp"
RANK = {
    "core": 0,
    "io": 1,
    "analyses": 2,
    "applications": 2,
    "training": 2,
    "reproduce": 3,
    "commands": 4,
}
TOP = 5  # cli.py, __init__.py, __main__.py


def _layer(parts: tuple[str, ...]) -> tuple[str, int]:
    if parts and parts[0] in RANK:
        return parts[0], RANK[parts[0]]
    return "top", TOP


def _imports(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    rel = path.relative_to(SRC).with_suffix("").parts
    pkg = rel[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                target = base + tuple((node.module or "").split(".")) if node.module else base
                if not node.module:  # from .. import x: x may be a subpackage
                    for a in node.names:
                        out.append((node.lineno, base + (a.name,)))
                    continue
            elif node.module and node.module.split(".")[0] == "repdisp":
                target = tuple(node.module.split(".")[1:])
            else:
                continue
            out.append((node.lineno, tuple(p for p in target if p)))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "repdisp":
                    out.append((node.lineno, tuple(a.name.split(".")[1:])))
    return out


def _violations() -> list[str]:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("").parts
        name, rank = _layer(rel[:-1] if len(rel) > 1 else ())
        for line, target in _imports(path):
            tname, trank = _layer(target)
            if tname == name:
                continue
            if trank >= rank:
                bad.append(
                    f"{path.relative_to(SRC)}:{line} ({name}) imports {'.'.join(target)} ({tname})"
                )
    return bad


def test_imports_point_down() -> None:
    assert _violations() == []


@pytest.mark.parametrize("layer", list(RANK))
def test_every_layer_is_a_folder(layer: str) -> None:
    assert (SRC / layer / "__init__.py").is_file()


def test_checker_catches_an_upward_import(tmp_path: Path) -> None:
    # the checker itself must be able to fail: a core module importing an analysis
    src = "from ..analyses.measure import measure\nfrom ..io import results\n"
    tree = tmp_path / "x.py"
    tree.write_text(src)
    nodes = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)]
    targets = [
        ("core",)[: len(("core",)) - (n.level - 1)] + tuple(n.module.split(".")) for n in nodes
    ]
    assert [_layer(t)[1] > RANK["core"] for t in targets] == [True, True]


def test_reproduce_sits_between_the_libraries_and_the_commands() -> None:
    # nothing below reproduce may import it; reproduce may import every library floor
    assert all(_layer((x,))[1] < _layer(("reproduce",))[1] for x in ("core", "io", "analyses"))
    assert _layer(("reproduce",))[1] < _layer(("commands",))[1] < TOP


def _exists(target: tuple[str, ...]) -> bool:
    """A module, a package, or a name inside one (``from .x import name`` records x.name)."""
    for n in (len(target), len(target) - 1):
        base = SRC.joinpath(*target[:n]) if n else SRC
        if n >= 0 and (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()):
            return True
    return False


def test_every_relative_import_resolves() -> None:
    # a lazy ``from ..x import y`` inside a function of a moved module fails only when called;
    # every target must be a module or package of src/repdisp (or a name in one)
    bad = [
        f"{path.relative_to(SRC)}:{line} imports {'.'.join(target)}"
        for path in sorted(SRC.rglob("*.py"))
        for line, target in _imports(path)
        if not _exists(target)
    ]
    assert bad == []
