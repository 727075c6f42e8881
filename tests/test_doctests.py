"""The public API's docstrings: numpydoc sections with an example, and every example runs.

Each object exported by ``repdisp`` (and ``PushAwayLoss``) must document itself with an
``Examples`` section; the examples run here through ``doctest`` (those that need a real model are
marked ``+SKIP``), so a documented result that drifts from the code fails this test.
"""

from __future__ import annotations

import doctest
import inspect

import pytest

import repdisp
from repdisp.training import PushAwayLoss

PUBLIC = {name: getattr(repdisp, name) for name in repdisp.__all__} | {"PushAwayLoss": PushAwayLoss}
NEEDS_A_MODEL = {
    "measure",
    "MeasureResult",
    "SiteDispersion",
    "load_model",
    "prepare",
    "make_segments",
}


def _run(obj: object, name: str) -> doctest.TestResults:
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(obj, name, globs={}):
        runner.run(test)
    return runner.summarize(verbose=False)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_docstring_has_a_passing_example(name: str) -> None:
    obj = PUBLIC[name]
    doc = inspect.getdoc(obj) or ""
    assert "Examples\n--------\n>>> " in doc, f"{name}: no numpydoc Examples section"
    result = _run(obj, name)
    assert result.failed == 0
    if name not in NEEDS_A_MODEL:  # runnable without downloads: it must actually run
        assert result.attempted > 0


def test_runner_catches_a_wrong_example() -> None:
    def f() -> None:
        """Examples
        --------
        >>> 1 + 1
        3
        """

    assert _run(f, "f") == doctest.TestResults(failed=1, attempted=1)
