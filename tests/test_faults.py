"""Faults in real processes (``python -m repdisp`` in a subprocess): the disk filling up during a
shard write and during a result write (a small tmpfs, so the ENOSPC is the kernel's), SIGINT and
SIGTERM during extraction and during training, a read-only ``$REPDISP_HOME`` and two runs
writing one ``--out`` at once. Each ends with one stderr line and its exit code (2, 130, 143),
leaves no partial file, keeps finished shards, says so only when there are some, and the rerun
resumes. The tmpfs tests need ``mount`` (root); they are skipped where it is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = Path(os.environ.get("REPDISP_FAULTS_SRC") or Path(__file__).resolve().parents[1] / "src")
pytestmark = pytest.mark.slow  # subprocesses that load a model: tens of seconds each


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(SRC), REPDISP_HOME=str(home))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "REPDISP_DEBUG"):
        env.pop(var, None)
    return env


def _measure(model_dir, out, *extra, segments=128):
    return [
        sys.executable, "-m", "repdisp", "measure", "--model", str(model_dir), "--quiet",
        "--data", "python-docs", "--segments", str(segments), "--seq-len", "64",
        "--sites", "everything", "--bootstrap", "20", "--out", str(out), *extra,
    ]  # fmt: skip


def _lines(stderr: bytes) -> list[str]:
    return [ln for ln in stderr.decode().splitlines() if ln.strip() and "Loading weights" not in ln]


def _one_line(proc, rc: int) -> str:
    lines = _lines(proc.stderr if isinstance(proc.stderr, bytes) else proc.stderr.read())
    assert proc.returncode == rc and len(lines) == 1, (proc.returncode, lines[-5:])
    assert "Traceback" not in lines[0] and lines[0].startswith("repdisp: "), lines
    return lines[0]


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, ro=False) -> a fresh tmpfs folder; unmounted at the end."""
    mounted: list[Path] = []

    def mount(size: str, ro: bool = False) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _no_partial_files(folder: Path) -> None:
    left = [p.name for p in folder.rglob(".*")]
    assert not left, left  # no temp file of an atomic write outlives the write
    for p in folder.rglob("*.json"):
        json.loads(p.read_text())  # every file there is whole


def test_disk_full_during_a_shard_write(tiny_gpt2_dir, tmp_path, tmpfs):
    disk = tmpfs("96k")  # a shard of 64 segments x 6 sites is ~60 KB: the second one fails
    shards = disk / "sh"
    cmd = _measure(
        tiny_gpt2_dir, tmp_path / "out", "--cache-dir", str(shards), "--shard-segments", "64"
    )
    proc = subprocess.run(cmd, env=_env(tmp_path / "home"), capture_output=True)
    line = _one_line(proc, 2)
    assert "No space left on device" in line and "shard_00001.npz" in line, line
    assert line.endswith("finished shards are kept"), line
    _no_partial_files(shards)
    assert (shards / "shard_00000.json").exists() and not (shards / "shard_00001.json").exists()
    assert not (tmp_path / "out" / "measure.json").exists()
    big = tmp_path / "sh"  # the same shards on a disk with room: the rerun resumes
    shutil.copytree(shards, big)
    first = (big / "shard_00000.npz").stat().st_mtime_ns
    cmd[cmd.index(str(shards))] = str(big)
    done = subprocess.run(cmd, env=_env(tmp_path / "home"), capture_output=True)
    assert done.returncode == 0, _lines(done.stderr)[-3:]
    assert (big / "shard_00000.npz").stat().st_mtime_ns == first  # reused, not recomputed
    assert json.loads((tmp_path / "out" / "measure.json").read_text())["n_segments"] == 128


def test_disk_full_during_a_result_write(tiny_gpt2_dir, tmp_path, tmpfs):
    disk = tmpfs("16k")  # the JSON and CSVs fit, the ~40 KB figure does not
    proc = subprocess.run(
        _measure(tiny_gpt2_dir, disk / "out", segments=32),
        env=_env(tmp_path / "home"),
        capture_output=True,
    )
    line = _one_line(proc, 2)
    assert "No space left on device" in line, line
    assert line.endswith("finished shards are kept"), line  # the extraction shards, in home
    _no_partial_files(disk)
    assert not (disk / "out" / "measure.png").exists()


def test_read_only_home_is_one_line(tiny_gpt2_dir, tmp_path, tmpfs):
    home = tmpfs("64k", ro=True)
    proc = subprocess.run(
        _measure(tiny_gpt2_dir, tmp_path / "out", segments=16), env=_env(home), capture_output=True
    )
    line = _one_line(proc, 2)
    assert "Read-only file system" in line and str(home) in line, line
    assert "finished shards are kept" not in line  # there are none


def _wait_for(path: Path, proc, timeout=600.0) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not path.exists():
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the run finished before the signal (machine too fast)")


@pytest.mark.parametrize(
    ("sig", "rc", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_signal_during_extraction_then_resume(tiny_gpt2_dir, tmp_path, sig, rc, word):
    shards = tmp_path / "sh"
    cmd = _measure(
        tiny_gpt2_dir, tmp_path / "out", "--cache-dir", str(shards), "--shard-segments", "16"
    )
    proc = subprocess.Popen(
        cmd, env=_env(tmp_path / "home"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for(shards / "shard_00000.json", proc)
    first = (shards / "shard_00000.npz").stat().st_mtime_ns
    proc.send_signal(sig)
    proc.wait(timeout=120)
    line = _one_line(proc, rc)
    assert (
        line
        == f"repdisp: {word}{'' if sig == signal.SIGINT else ' (SIGTERM)'}; finished shards are kept and the same command resumes"
    )
    _no_partial_files(shards)
    assert not (tmp_path / "out" / "measure.json").exists()
    done = subprocess.run(cmd, env=_env(tmp_path / "home"), capture_output=True)
    assert done.returncode == 0, _lines(done.stderr)[-3:]
    assert (shards / "shard_00000.npz").stat().st_mtime_ns == first  # resumed from it


def _finetune(model_dir, out, steps, save_every):
    return [
        sys.executable, "-m", "repdisp", "finetune", "--model", str(model_dir), "--data",
        "python-docs", "--out", str(out), "--method", "full", "--steps", str(steps), "--lr",
        "1e-2", "--batch-size", "2", "--seq-len", "16", "--save-every", str(save_every),
        "--device", "cpu", "--quiet",
    ]  # fmt: skip


@pytest.mark.parametrize(("sig", "rc"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_training_then_resume(tiny_gpt2_dir, tmp_path, sig, rc):
    out, work, steps = tmp_path / "run", tmp_path / ".run.partial", 30
    cmd = _finetune(tiny_gpt2_dir, out, steps, 5)
    proc = subprocess.Popen(
        cmd, env=_env(tmp_path / "home"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for(work / "checkpoint-5" / "trainer_state.json", proc)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    line = _one_line(proc, rc)
    assert line.endswith("finished shards are kept and the same command resumes"), line
    assert not out.exists() and any(work.glob("checkpoint-*"))
    done = subprocess.run(cmd, env=_env(tmp_path / "home"), capture_output=True)
    assert done.returncode == 0, _lines(done.stderr)[-3:]
    losses = json.loads((out / "finetune.json").read_text())["loss"]
    assert [r["step"] for r in losses] == list(range(1, steps + 1))


def test_two_runs_on_one_out_at_once(tiny_gpt2_dir, tmp_path):
    out = tmp_path / "out"
    cmd = _measure(tiny_gpt2_dir, out, "--no-cache", segments=64)
    procs = [
        subprocess.Popen(
            cmd, env=_env(tmp_path / "home"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    for p in procs:
        p.wait(timeout=900)
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], codes
    loser = next(p for p in procs if p.returncode == 2)
    line = _one_line(loser, 2)
    assert "is being written by another repdisp run (pid" in line, line
    assert json.loads((out / "measure.json").read_text())["n_segments"] == 64  # the winner, whole
    assert not list(tmp_path.glob(".out.repdisp-lock"))  # released when the command ended
