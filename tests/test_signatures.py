"""No function on a command's path takes more than 8 parameters.

Every function and method in the folders the commands run through (``analyses``,
``applications``, ``training``, ``commands``, ``reproduce``) is read with ``ast``; its
parameters are counted (positional and keyword, ``self``/``cls``, ``*args`` and ``**kwargs``
not counted). Settings travel as objects instead (``core.sampling.Sampling``,
``core.settings.Statistics``, ``training.finetune_config.FinetuneConfig``), built once from
the flags.

``WRAPPERS`` names the public entry points that keep a longer keyword API for users: each
must only build its settings objects and return one call of its settings-object function (which
is counted like every other), and no command calls a wrapper.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "repdisp"
FOLDERS = ("analyses", "applications", "training", "commands", "reproduce")
LIMIT = 8

# Public keyword wrappers: "folder/file.py::function" -> the settings-object function it delegates
# to. A wrapper keeps its keywords for users, builds the settings objects and returns one call of
# its delegate (which counts as any other function); no command calls the wrapper itself.
WRAPPERS = {
    "analyses/measure.py::measure": "run_measure",
    "analyses/ppl_dispersion.py::ppl_vs_dispersion": "run_ppl_vs_dispersion",
    "analyses/clusters.py::clusters": "run_clusters",
    "applications/knnlm/evaluation.py::evaluate_knnlm": "run_evaluate_knnlm",
    "applications/knnlm/select.py::select_key": "run_select_key",
    "applications/knnlm/datastore.py::build_datastore": "run_build_datastore",
    "applications/mcqa/scoring.py::evaluate_task": "run_evaluate_task",
    "training/run.py::train_run": "run_train",
}


def _count(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names)


def _functions() -> dict[str, int]:
    """``folder/file.py::name`` -> the largest parameter count among functions of that name."""
    out: dict[str, int] = {}
    for folder in FOLDERS:
        for path in sorted((SRC / folder).rglob("*.py")) if (SRC / folder).is_dir() else []:
            rel = path.relative_to(SRC).as_posix()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    key = f"{rel}::{node.name}"
                    out[key] = max(out.get(key, 0), _count(node))
    return out


def test_no_function_on_a_command_path_takes_more_than_8_parameters():
    found = _functions()
    assert len(found) > 300  # the walk saw the package, not an empty folder
    over = {k: n for k, n in found.items() if n > LIMIT and k not in WRAPPERS}
    assert not over, f"more than {LIMIT} parameters (pass a settings object instead): {over}"


def test_counting_rule():
    tree = ast.parse(
        "def f(a, b, /, c, *args, d, e=1, **kw): pass\n"
        "class K:\n    def m(self, x, y): pass\n    @classmethod\n    def c(cls, x): pass\n"
    )
    counts = {
        n.name: _count(n) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
    }
    assert counts == {"f": 5, "m": 2, "c": 1}


def _node(key: str) -> ast.FunctionDef:
    rel, name = key.split("::")
    tree = ast.parse((SRC / rel).read_text(encoding="utf-8"))
    return next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _wrapper_fault(fn: ast.FunctionDef, delegate: str) -> str | None:
    """Why ``fn`` is not a thin wrapper around ``delegate`` (None when it is): its body, past
    the docstring, must be one ``return delegate(...)`` whose arguments only build objects
    from the wrapper's own parameters (names, constants and calls of them)."""
    body = fn.body[1:] if isinstance(fn.body[0], ast.Expr) else fn.body
    if len(body) != 1 or not isinstance(body[0], ast.Return):
        return "body is not one return statement"
    call = body[0].value
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        return "does not return a call"
    if call.func.id != delegate:
        return f"returns {call.func.id}(...), not {delegate}(...)"
    a = fn.args
    params = {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x}
    for node in ast.walk(call):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id not in params and not node.id[:1].isupper() and node.id != delegate:
                return f"computes with {node.id!r} (a wrapper only builds settings)"
        if isinstance(node, (ast.BinOp, ast.IfExp, ast.Compare, ast.Subscript, ast.Lambda)):
            return f"computes ({type(node).__name__}) instead of only building settings"
    return None


def test_public_wrappers_only_build_settings_and_delegate():
    found = _functions()
    for key, delegate in WRAPPERS.items():
        assert found[key] > LIMIT, f"{key} takes {found[key]} parameters: drop it from WRAPPERS"
        fault = _wrapper_fault(_node(key), delegate)
        assert fault is None, f"{key}: {fault}"
        rel = key.split("::")[0]
        assert found[f"{rel}::{delegate}"] <= LIMIT


def test_wrapper_check_can_fail():
    src = (
        "def ok(a, *, b=1):\n    'doc'\n    return run(a, S(b=b))\n"
        "def two(a):\n    x = a\n    return run(x)\n"
        "def other(a):\n    return go(a)\n"
        "def work(a):\n    return run(a + 1)\n"
        "def glob(a):\n    return run(a, helper(a))\n"
    )
    fns = {n.name: n for n in ast.parse(src).body}
    assert _wrapper_fault(fns["ok"], "run") is None
    for name in ("two", "other", "work", "glob"):
        assert _wrapper_fault(fns[name], "run") is not None, name


def test_no_command_calls_a_public_wrapper():
    """Commands run the settings-object functions; calling a wrapper would put its long
    keyword list back on the command's path."""
    names = {k.split("::")[1] for k in WRAPPERS}
    for path in sorted((SRC / "commands").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in names, f"{path.name} calls {node.func.id}"
