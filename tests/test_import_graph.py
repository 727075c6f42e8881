"""The import graph of src/repdisp has no circle, and core/ defers no repdisp import.

An edge A -> B is an import executed when A is imported: every ``import``/``from ... import``
statement of A outside a function body (class bodies, ``try`` and ``if`` blocks count; ``if
TYPE_CHECKING:`` blocks do not). ``from P import n`` is an edge to P, and also to ``P.n`` when
that is a module (then not to P: ``from . import x`` of a submodule needs only x). A circle (a strongly connected component of more than one module, or a module
importing itself) is refused anywhere in the package. Inside ``core/`` every repdisp import sits
at module top, so a circle cannot hide behind a function-local import; optional third-party
packages (``datasets``, ``faiss``, ``gguf``, ...) may still be imported lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "repdisp"


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``root`` (a package's name for its
    ``__init__.py``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST, in_function: bool = False):
    """(import node, inside a function?) for every import of ``tree``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        elif isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _statements(ast.Module(body=[child], type_ignores=[]), in_function)
        else:
            inner = in_function or isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            yield from _statements(node, inner)


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_pkg: bool, mods) -> list[str]:
    """The repdisp modules an import statement of module ``name`` loads."""
    top = next(iter(mods)).split(".")[0]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in mods]
    if node.level:
        pkg = name.split(".") if is_pkg else name.split(".")[:-1]
        base = pkg[: len(pkg) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    if module.split(".")[0] != top:
        return []
    subs = [f"{module}.{a.name}" for a in node.names]
    out = [s for s in subs if s in mods]
    if len(out) < len(subs) and module in mods:  # a name defined in the module itself
        out.append(module)
    return out


def import_graph(root: Path = SRC) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> modules it imports at import time, function-local repdisp imports in core/)."""
    mods = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    local = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        for node, in_function in _statements(tree):
            targets = _targets(node, name, is_pkg, mods)
            if in_function:
                if targets and name.split(".")[1:2] == ["core"]:
                    local.append(f"{path.relative_to(root)}:{node.lineno} imports {targets[0]}")
            else:
                graph[name].update(targets)
    return graph, local


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or with a self-edge (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle() -> None:
    graph, _ = import_graph()
    assert len(graph) > 50 and graph["repdisp.core.extract"]  # the walk saw the package
    assert circles(graph) == []


def test_core_has_no_function_local_repdisp_import() -> None:
    _, local = import_graph()
    assert local == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", "core/__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_checker_finds_a_circle_and_a_local_import(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "core/a.py": "from .b import f\n",
            "core/b.py": "from . import c\n",
            "core/c.py": "import pkg.core.a\n",
            "core/d.py": "def g():\n    from .a import f\n    import json\n",
            "core/e.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .e import x\n"
            ),
            "io/__init__.py": "",
            "io/r.py": "from ..core import d, x\nfrom pkg.core.e import y\n",
        },
    )
    graph, local = import_graph(root)
    assert graph["pkg.core.a"] == {"pkg.core.b"}
    assert graph["pkg.core.b"] == {"pkg.core.c"}
    assert graph["pkg.io.r"] == {"pkg.core", "pkg.core.d", "pkg.core.e"}
    assert graph["pkg.core.e"] == set() and graph["pkg.core.d"] == set()
    assert circles(graph) == [["pkg.core.a", "pkg.core.b", "pkg.core.c"]]
    assert local == ["core/d.py:2 imports pkg.core.a"]
    (root / "core" / "c.py").write_text("")
    assert circles(import_graph(root)[0]) == []
