"""The status line shown while a series' statistics run (``io.progress.StatusLine``)."""

from __future__ import annotations

import re
import threading
import time

from repdisp.io.progress import StatusLine


def test_status_line_moves_while_the_block_runs(capsys):
    with StatusLine("statistics m / d", interval=0.05) as line:
        time.sleep(0.6)
    err = capsys.readouterr().err
    shown = [float(x) for x in re.findall(r"statistics m / d: (\d+\.\d) s", err)]
    assert len(set(shown)) >= 4 and shown == sorted(shown)  # redrawn with a growing clock
    assert re.search(r"statistics m / d: 0\.[6-9] s, done|: [1-9]\.\d s, done", err)
    assert line.close() >= 0.6  # closing twice is harmless and gives the time


def test_disabled_status_line_prints_nothing_and_starts_no_thread(capsys):
    before = threading.active_count()
    with StatusLine("statistics", enabled=False):
        assert threading.active_count() == before
    assert capsys.readouterr().err == ""


def test_ppl_vs_dispersion_shows_one_line_per_series(tiny_gpt2, capsys):
    from repdisp.analyses.ppl_dispersion import ppl_vs_dispersion
    from repdisp.core.sampling import Sampling

    sampling = Sampling(segments=24, seq_len=12, cache=False, progress=True)
    ppl_vs_dispersion([tiny_gpt2], ["python-docs"], sampling=sampling, bin_size=4, n_bins=3,
                      bootstrap=50, stats_reps=20, permutations=20, curve_bins=4,
                      last_token=True, contexts=(8, 12))  # fmt: skip
    err = capsys.readouterr().err
    for length in (8, 12):
        assert re.search(rf"statistics tiny-gpt2 / python-docs / {length}: \d+\.\d s, done", err)
    capsys.readouterr()
    ppl_vs_dispersion([tiny_gpt2], ["python-docs"], bin_size=4, n_bins=3, bootstrap=50,
                      stats_reps=20, permutations=20, curve_bins=4,
                      sampling=Sampling(segments=24, seq_len=12, cache=False, progress=False))  # fmt: skip
    assert "statistics" not in capsys.readouterr().err
