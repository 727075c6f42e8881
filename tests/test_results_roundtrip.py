"""Round trip of result files: ``write_result`` writes what the command writes (the per-segment
Parquet included), ``load_result`` reads a file or a whole folder back (``segments()`` too), every
Parquet carries the result's provenance, and ``provenance["call"]`` is Python that runs as written.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

import repdisp
from repdisp.cli import main
from repdisp.core.sampling import Sampling
from repdisp.io.results import load_result, write_result


def _measure_args():
    return dict(segments=6, seq_len=16, bootstrap=50, sites=["final", "0.attn"], cache=False,
                progress=False, per_segment=True)  # fmt: skip


def _parquet_meta(path):
    return json.loads(pq.read_schema(path).metadata[b"repdisp"])


def test_write_result_writes_what_the_command_writes(tiny_gpt2_dir, tmp_path):
    cmd = tmp_path / "cmd"
    argv = ["measure", "--model", str(tiny_gpt2_dir), "--segments", "6", "--seq-len", "16",
            "--no-cache", "--quiet", "--bootstrap", "50", "--site", "final,0.attn",
            "--out", str(cmd)]  # fmt: skip
    assert main(argv) == 0
    r = repdisp.measure(str(tiny_gpt2_dir), **_measure_args())
    api = tmp_path / "api"
    paths = write_result(api, "measure", r)
    names = sorted(p.name for p in cmd.iterdir())
    assert [p.name for p in paths][-1] == "measure_segments.parquet"
    assert sorted(p.name for p in paths) == names == sorted(p.name for p in api.iterdir())
    assert "measure_segments.parquet" in names and "measure.png" in names
    for name in names:
        if name.endswith((".csv", ".png")):  # no provenance in them: equal byte for byte
            assert (api / name).read_bytes() == (cmd / name).read_bytes(), name
    a, b = (pq.read_table(d / "measure_segments.parquet") for d in (api, cmd))
    assert a.to_pylist() == b.to_pylist() == r.segments()
    assert a.column_names[:4] == ["model", "data", "segment", "source"]
    assert set(a.column("model").to_pylist()) == {r.model} and set(a.column("data").to_pylist())
    # the provenance in the Parquet schema is the JSON file's provenance block
    for folder in (api, cmd):
        doc = json.loads((folder / "measure.json").read_text())
        meta = _parquet_meta(folder / "measure_segments.parquet")
        assert meta["provenance"] == doc["provenance"]
        assert meta["kind"] == "measure" and meta["result"] == "measure.json"
    assert _parquet_meta(cmd / "measure_segments.parquet")["provenance"]["command"].startswith(
        "repdisp measure --model "
    )
    assert "segment" not in json.dumps(json.loads((api / "measure.json").read_text())["sites"])


def test_segments_after_loading_and_long_format(tiny_gpt2, tmp_path):
    from repdisp.analyses.ppl_dispersion import ppl_vs_dispersion

    m = repdisp.measure(tiny_gpt2, **_measure_args())
    samp = Sampling(segments=24, seq_len=12, cache=False, progress=False)
    p = ppl_vs_dispersion([tiny_gpt2], ["python-docs"], sampling=samp, bin_size=4, n_bins=3,
                          bootstrap=10, stats_reps=0, permutations=0, per_segment=True)  # fmt: skip
    for name, r in (("m", m), ("p", p)):
        write_result(tmp_path, name, r, figure=False)
        back = load_result(tmp_path / f"{name}.json")
        assert back.segments() == r.segments() and len(r.segments()) == {"m": 6, "p": 24}[name]
        assert _same(back.to_dict(), r.to_dict()) and "per_segment_rows" not in r.to_dict()
        meta = _parquet_meta(tmp_path / f"{name}_segments.parquet")
        assert (
            meta["provenance"] == json.loads((tmp_path / f"{name}.json").read_text())["provenance"]
        )
        assert {"model", "data"} <= set(back.segments()[0])
        # the Parquet alone: its rows, and the provenance from its schema
        alone = load_result(tmp_path / f"{name}_segments.parquet")
        assert alone.tables()["segments"] == r.segments()
        assert alone.provenance["models"] == meta["provenance"]["models"]
    # long format: one row per segment x site, values those of the wide columns
    import pandas as pd

    wide = m.segments()
    long = pd.DataFrame(back_long := load_result(tmp_path / "m.json").segments(long=True))
    assert len(back_long) == 6 * 2 and list(long["site"][:2]) == ["0.attn", "final"]
    assert {"score", "within_dispersion", "ppl", "segment", "model"} <= set(long.columns)
    assert not [c for c in long.columns if "@" in c]
    for site in ("final", "0.attn"):
        part = long[long["site"] == site].sort_values("segment")
        assert part["score"].tolist() == [row[f"score@{site}"] for row in wide]
        assert part["within_dispersion"].tolist() == [
            row[f"within_dispersion@{site}"] for row in wide
        ]
        assert part["ppl"].tolist() == [row["ppl"] for row in wide]
    # a result without per-segment rows writes no Parquet and has no segments
    q = repdisp.measure(tiny_gpt2, segments=4, seq_len=8, bootstrap=5, cache=False,
                        progress=False)  # fmt: skip
    paths = write_result(tmp_path / "q", "q", q, figure=False)
    assert q.segments() is None and q.segments(long=True) is None
    assert not [x for x in paths if x.suffix == ".parquet"]
    assert load_result(paths[0]).segments() is None


def test_load_result_of_a_folder_is_a_dict_by_name(tiny_gpt2, tmp_path):
    m = repdisp.measure(tiny_gpt2, segments=4, seq_len=8, bootstrap=5, cache=False,
                        progress=False, per_segment=True)  # fmt: skip
    from repdisp.io.results import GenericResult

    write_result(tmp_path, "measure", m)
    write_result(tmp_path, "other", GenericResult({"rows": [{"x": 1.0}]}))
    (tmp_path / "manifest.json").write_text("{}")
    found = load_result(tmp_path)
    assert sorted(found) == ["measure", "other"]
    assert isinstance(found["measure"], type(m)) and _same(found["measure"].to_dict(), m.to_dict())
    assert found["measure"].segments() == m.segments()
    assert found["other"].to_frame("rows")["x"].tolist() == [1.0]
    # one file: the result itself, as before
    assert isinstance(load_result(tmp_path / "measure.json"), type(m))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(repdisp.RepdispError, match="no result files"):
        load_result(empty)


def test_recorded_call_runs_as_written(tiny_gpt2_dir):
    """The call string names a function reachable from ``import repdisp`` and its arguments in
    source form: evaluated, it gives the same numbers."""
    from repdisp.analyses.ppl_dispersion import ppl_vs_dispersion

    samp = Sampling(segments=24, seq_len=12, cache=False, progress=False)
    r = ppl_vs_dispersion([str(tiny_gpt2_dir)], ["python-docs"], sampling=samp, bin_size=4,
                          n_bins=3, bootstrap=30, stats_reps=20, permutations=20,
                          curve_bins=4)  # fmt: skip
    call = r.provenance["call"]
    assert call.startswith("repdisp.analyses.ppl_dispersion.ppl_vs_dispersion(models=[")
    assert "sampling=repdisp.core.sampling.Sampling(segments=24, seq_len=12, " in call
    again = eval(call, {"repdisp": repdisp})  # noqa: S307 - the string under test
    assert type(again) is type(r)
    a, b = r.to_dict(), again.to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert _same(a, b) and again.series[0].correlations["across"]["pearson"].r == pytest.approx(
        r.series[0].correlations["across"]["pearson"].r, abs=0
    )
    assert again.provenance["call"] == call
    # an exported entry point keeps its short name, and runs too
    m = repdisp.measure(str(tiny_gpt2_dir), segments=4, seq_len=8, bootstrap=5, cache=False,
                        progress=False)  # fmt: skip
    assert m.provenance["call"].startswith("repdisp.measure(model='")
    m2 = eval(m.provenance["call"], {"repdisp": repdisp})  # noqa: S307
    assert [s.dispersion for s in m2.sites] == [s.dispersion for s in m.sites]
    assert m2.ppl == m.ppl and np.isfinite(m.ppl)
    # the module path resolves after a bare `import repdisp` in a new interpreter
    code = (
        "import repdisp; f = repdisp.analyses.ppl_dispersion.ppl_vs_dispersion; "
        "s = repdisp.core.sampling.Sampling(segments=3); print(f.__name__, s.segments)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ppl_vs_dispersion", "3"]


def test_merge_ppl_takes_a_folder_of_one_ppl_result(tiny_gpt2, tmp_path, capsys):
    from repdisp.analyses.ppl_dispersion import ppl_vs_dispersion

    samp = Sampling(segments=24, seq_len=12, cache=False, progress=False)
    p = ppl_vs_dispersion([tiny_gpt2], ["python-docs"], sampling=samp, bin_size=4, n_bins=3,
                          bootstrap=10, stats_reps=0, permutations=0, per_segment=True)  # fmt: skip
    write_result(tmp_path / "a", "ppl_vs_dispersion", p, figure=False)
    write_result(tmp_path / "a", "other", repdisp.measure(tiny_gpt2, segments=4, seq_len=8,
                 bootstrap=5, cache=False, progress=False), figure=False)  # fmt: skip
    assert main(["merge-ppl", str(tmp_path / "a"), "--out", str(tmp_path / "m")]) == 0
    merged = load_result(tmp_path / "m" / "ppl_vs_dispersion_merged.json")
    assert _same(merged.to_dict()["series"], p.to_dict()["series"])
    write_result(tmp_path / "a", "second", p, figure=False)  # two of them: which one is meant?
    assert main(["merge-ppl", str(tmp_path / "a"), "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give one ppl-vs-dispersion JSON file" in err[0]


def _same(a, b) -> bool:
    """Equal results, nan equal to nan (an across estimate's analytic p is nan by design)."""
    return json.dumps(a, sort_keys=True, default=repr) == json.dumps(
        b, sort_keys=True, default=repr
    )
