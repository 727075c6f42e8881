"""kill -9 in the middle of ``ppl-vs-dispersion`` and of ``knnlm build``, then the same command
again: it resumes from the finished shards (they are not recomputed) and ends with the result of
an uninterrupted run. (``measure``: tests/test_scale.py; ``finetune``/``train``: test_resume.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from repdisp.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"

# The victim: the CLI with every shard/manifest save slowed down (only so that the kill surely
# lands between two saves) and, for ppl-vs-dispersion, shards of 128 segments.
_VICTIM = """
import sys, time
import repdisp.core.shards as shards
import repdisp.applications.knnlm.datastore as ds
save = shards.ShardStore.save
def slow_save(self, *a, **k):
    out = save(self, *a, **k)
    time.sleep(0.5)
    return out
shards.ShardStore.save = slow_save
write = ds._write_manifest
def slow_write(*a, **k):
    write(*a, **k)
    time.sleep(0.3)
ds._write_manifest = slow_write
import repdisp.core.extract as ex
extract = ex.extract
def small_shards(*a, **k):
    k["shard_segments"] = 128
    return extract(*a, **k)
ex.extract = small_shards
import repdisp.analyses.measure as m
import repdisp.core.sampling as sm
for mod in (m, sm):
    if hasattr(mod, "extract"):
        mod.extract = small_shards
from repdisp.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(SRC), REPDISP_HOME=str(home))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    return env


def _kill_when(args: list[str], env: dict, ready, log: Path) -> None:
    with open(log, "w") as f:
        victim = subprocess.Popen(
            [sys.executable, "-c", _VICTIM, *args], env=env, stdout=f, stderr=f
        )
    deadline = time.monotonic() + 240
    while not ready():
        assert victim.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()


def _stable(doc):
    """A result without what may differ between identical runs (timings, the run block) and the
    provenance's command line (the two runs compared here write to different --out folders)."""
    if isinstance(doc, dict):
        drop = ("seconds", "run", "wall_s", "command")
        return {k: _stable(v) for k, v in doc.items() if k not in drop}
    if isinstance(doc, list):
        return [_stable(v) for v in doc]
    return doc


@pytest.fixture
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow  # subprocesses killed and rerun: about a minute or more
def test_kill_9_ppl_vs_dispersion_resumes(tiny_gpt2_dir, tmp_path, one_thread):
    home = tmp_path / "home"
    args = ["ppl-vs-dispersion", "--model", str(tiny_gpt2_dir), "--data", "python-docs"]
    args += ["--segments", "384", "--seq-len", "12", "--bin-size", "5", "--bins", "4"]
    args += ["--bootstrap", "50", "--quiet"]
    out = tmp_path / "resumed"

    def first_shard_done():
        return any(home.rglob("shard_00000.json"))

    _kill_when([*args, "--out", str(out)], _env(home), first_shard_done, tmp_path / "v.log")
    done = sorted(home.rglob("shard_*.json"))
    assert 1 <= len(done) < 3 and not (out / "ppl_vs_dispersion.json").exists()
    first = {p: p.stat().st_mtime_ns for p in home.rglob("shard_*.npz")}

    # the same command again, in the victim's settings (128-segment shards), in a subprocess
    victim_again = [sys.executable, "-c", _VICTIM, *args, "--out", str(out)]
    subprocess.run(victim_again, env=_env(home), check=True, capture_output=True)
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # reused, not recomputed

    ref = tmp_path / "ref"
    subprocess.run(
        [sys.executable, "-c", _VICTIM, *args, "--out", str(ref)],
        env=_env(tmp_path / "home2"),
        check=True,
        capture_output=True,
    )
    a = json.loads((out / "ppl_vs_dispersion.json").read_text())
    b = json.loads((ref / "ppl_vs_dispersion.json").read_text())
    assert _stable(a) == _stable(b)


@pytest.mark.slow  # subprocesses killed and rerun: about a minute or more
def test_kill_9_knnlm_build_resumes(tiny_gpt2_dir, tmp_path):
    home = tmp_path / "home"
    args = ["knnlm", "build", "--model", str(tiny_gpt2_dir), "--data", "python-docs@0:600"]
    args += ["--context", "32", "--stride", "16", "--shard-windows", "8", "--site", "-1.ffn"]
    args += ["--quiet"]
    out = tmp_path / "ds"

    def first_shard_done():
        try:
            return bool(json.loads((out / "manifest.json").read_text())["shards"])
        except (OSError, ValueError, KeyError):
            return False

    _kill_when([*args, "--out", str(out)], _env(home), first_shard_done, tmp_path / "v.log")
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) >= 1
    kept = dict(manifest["shards"])

    assert main([*args, "--out", str(out)]) == 0  # the same command (in process: faster)
    ref = tmp_path / "ref"
    assert main([*args, "--out", str(ref)]) == 0
    a, b = (
        json.loads((out / "manifest.json").read_text()),
        json.loads((ref / "manifest.json").read_text()),
    )
    assert a["complete"] and a["shards"] == b["shards"] and a["meta"] == b["meta"]
    assert all(a["shards"][k] == v for k, v in kept.items())
    for name in ("values.npy", "keys.1.ffn.npy", "index.1.ffn.faiss"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert np.load(out / "values.npy").shape[0] == a["meta"]["n_keys"]
