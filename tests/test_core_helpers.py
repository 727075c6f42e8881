"""The shared helpers that replaced repeated code: each against an independent reference.

prepend_bos (every window's BOS), atomic_folder (converted models, training data),
bootstrap_weights (the three dispersion bootstraps), mean_euclidean_between (one blocked kernel,
vs scipy's cdist), split_docs(next_line=True) (finetune's held-out split), new_figure (a Figure
with no global backend switch).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist

from repdisp.core.bootstrap import bootstrap_weights
from repdisp.core.corpus import prepend_bos
from repdisp.core.geometry import mean_euclidean, mean_euclidean_between
from repdisp.core.shards import atomic_folder
from repdisp.training.data import split_docs


def test_prepend_bos():
    w = np.array([[5, 6, 7], [8, 9, 10]], dtype=np.int32)
    out = prepend_bos(w, 1)
    assert out.dtype == np.int64 and out.tolist() == [[1, 5, 6, 7], [1, 8, 9, 10]]
    assert prepend_bos(w, None).tolist() == w.tolist()


def test_atomic_folder_replaces_keeps_and_cleans_up(tmp_path: Path):
    target = tmp_path / "t"
    with atomic_folder(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with atomic_folder(target) as tmp:  # replace: the old content goes
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    with atomic_folder(target, replace=False) as tmp:  # another process finished first
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "d").write_text("4")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # no temp folder left behind


@pytest.mark.parametrize("n", [7, 5000])  # one block; 2e6 // 5000 = 400-row blocks
def test_bootstrap_weights_are_one_seeded_stream(n):
    rows = np.concatenate(list(bootstrap_weights(n, 1000, seed=3)))
    direct = np.random.default_rng(3).multinomial(n, np.full(n, 1.0 / n), size=1000)
    assert rows.shape == (1000, n) and (rows == direct).all() and (rows.sum(1) == n).all()


def test_euclidean_kernels_match_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(37, 5)), rng.normal(size=(11, 5)) + 2.0
    assert mean_euclidean_between(a, b, block=8) == pytest.approx(cdist(a, b).mean(), rel=1e-12)
    assert mean_euclidean(a, block=8) == pytest.approx(pdist(a).mean(), rel=1e-12)


def test_split_docs_next_line_cuts_forward():
    docs = ["aaaa\nbbbb\n", "cccc\n", "dddd\n"]  # 20 characters; 30 % = 6 lands inside "bbbb"
    assert split_docs(docs, [0.3, 0.7], next_line=True) == [["aaaa\nbbbb\n"], docs[1:]]
    assert split_docs(docs, [0.3, 0.7]) == [["aaaa\n"], ["bbbb\n", *docs[1:]]]


def test_new_figure_switches_no_backend():
    # a fresh interpreter: building a figure must neither import pyplot nor call matplotlib.use
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use = lambda *a, **k: sys.exit('matplotlib.use called')\n"
        "from repdisp.io.results import new_figure\n"
        "fig, (a, b) = new_figure(1, 2, figsize=(4, 2), layout='constrained')\n"
        "a.plot([0, 1], [1, 0])\n"
        "print(type(fig).__name__, len(fig.axes), 'matplotlib.pyplot' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Figure", "2", "False"]


def test_atomic_files_and_folders_get_umask_modes_not_owner_only(tmp_path: Path):
    """mkstemp/mkdtemp make 0600/0700; results written through them must be as readable as a
    plain open()/mkdir() would make them under the same umask."""
    import os
    import stat

    from repdisp.core import shards
    from repdisp.core.shards import atomic_folder, atomic_write

    old = os.umask(shards._UMASK)  # the process umask, as read when repdisp was imported
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        atomic_write(tmp_path / "a.txt", lambda f: f.write(b"x"))
        with atomic_folder(tmp_path / "folder") as tmp:
            (tmp / "f").write_text("x")
        (tmp_path / "plain_dir").mkdir()
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.txt") == mode(plain) == 0o666 & ~shards._UMASK
    assert mode(tmp_path / "folder") == mode(tmp_path / "plain_dir") == 0o777 & ~shards._UMASK
