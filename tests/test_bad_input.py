"""Bad-input matrix of the CLI (each: one line naming the problem, exit 2, no traceback), safe
loading (no unpickling, no remote code without the flags), simulated disk-full and Ctrl-C, and
property-based checks of the geometry functions."""

from __future__ import annotations

import errno
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repdisp.cli import main
from repdisp.core.geometry import CosineStats, dispersion, per_example_scores
from repdisp.core.models import BUNDLED
from repdisp.core.shards import ShardStore

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--segments", "4", "--seq-len", "16", "--no-cache", "--quiet", "--bootstrap", "20"]
WORDS = " ".join(f"word{i}" for i in range(300))


def _error(capsys, args: list[str]) -> str:
    """Run the CLI; assert exit 2 with exactly one ``repdisp: error`` line and no traceback."""
    try:
        rc = main(args)
    except SystemExit as e:  # argparse: usage, then one error line naming the flag
        rc = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if re.match(r"repdisp[\w -]*: error: ", line)]
    assert rc == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.fixture
def measure_tiny(tiny_gpt2_dir):
    return ["measure", "--model", str(tiny_gpt2_dir), *SMALL]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny_gpt2_dir):
    """Broken inputs of every kind, made once."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.txt").write_text("")
    (d / "short.txt").write_text("only a few words")
    (d / "latin1.txt").write_bytes(WORDS.encode() + b" caf\xe9 " + WORDS.encode())
    (d / "nofield.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    (d / "noweights").mkdir()
    shutil.copy(tiny_gpt2_dir / "config.json", d / "noweights")
    (d / "empty_folder").mkdir()
    trunc = d / "truncated"
    shutil.copytree(tiny_gpt2_dir, trunc)
    blob = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    (d / "notgguf.gguf").write_bytes(b"PK\x03\x04" + bytes(100))
    real = BUNDLED["smollm2-135m"].gguf_path()
    head = real.open("rb").read(300) if real else b"GGUF\x03\x00\x00\x00" + bytes(16)
    (d / "truncated.gguf").write_bytes(head)
    return d


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--data", "{d}/empty.txt"], ["empty.txt", "no text"]),
        (["--data", "{d}/short.txt"], ["short.txt", "fewer than one segment"]),
        (["--data", "{d}/latin1.txt"], ["not valid UTF-8", "--encoding-errors replace"]),
        (["--data", "{d}/nofield.jsonl"], ["line 2", "no field 'text'"]),
        (["--data", "{d}/missing.txt"], ["not found"]),
        (["--model", "no such model"], ["unknown model 'no such model'"]),
        (["--model", "{d}/noweights"], ["no model weights"]),
        (["--model", "{d}/empty_folder"], ["no config.json"]),
        (["--model", "{d}/truncated"], ["cannot load model", "SafetensorError"]),
        (["--model", "{d}/notgguf.gguf"], ["not a GGUF file"]),
        (["--model", "{d}/truncated.gguf"], ["cannot read GGUF", "truncated or corrupt"]),
        (["--site", "7.attn"], ["unknown site '7.attn'"]),
        (["--segments", "1"], ["argument --segments: must be at least 2"]),
        (["--seq-len", "0"], ["argument --seq-len: must be at least 2"]),
        (["--seq-len", "4096"], ["exceeds the model's context of 256"]),
        (["--skip-first", "15"], ["--skip-first 15 leaves no tokens"]),
        (["--batch-size", "0"], ["argument --batch-size: must be at least 1"]),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, measure_tiny, bad_files, extra, words):
    line = _error(capsys, [*measure_tiny, *[e.format(d=bad_files) for e in extra]])
    for w in words:
        assert w in line, line


def test_non_utf8_is_accepted_with_replace(capsys, measure_tiny, bad_files):
    assert main([*measure_tiny, "--data", str(bad_files / "latin1.txt")]) == 2
    args = [*measure_tiny, "--data", str(bad_files / "latin1.txt"), "--encoding-errors", "replace"]
    assert main(args) == 0
    assert "dispersion" in capsys.readouterr().out


@pytest.mark.slow
def test_real_cli_stderr_is_exactly_one_line(bad_files):
    """In a fresh process (no pytest capture), nothing but our line reaches stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "repdisp", "measure", "--model", str(bad_files / "truncated")]
    proc = subprocess.run([*cmd, *SMALL], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("repdisp: error: cannot load")


def _hooked(monkeypatch, lm, block: int, change):
    """Serve ``lm`` to the CLI with ``change`` applied to block ``block``'s output."""
    from repdisp.core.sites import blocks_of

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = change(h.clone())
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = blocks_of(lm.model)[block].register_forward_hook(hook)
    monkeypatch.setattr("repdisp.commands.measure.model_from_args", lambda args: lm)
    return handle


def _overflow(h):
    h[1, -1, :3] = torch.tensor([65504.0], dtype=torch.float16).float() * 2  # past fp16 max
    return h.half().float()  # -> inf, as an fp16 model would produce


def test_nan_inf_hidden_states_are_reported_not_averaged(capsys, monkeypatch, tiny_gpt2):
    handle = _hooked(monkeypatch, tiny_gpt2, 0, _overflow)
    try:
        line = _error(capsys, ["measure", "--site", "0.ffn", *SMALL])
    finally:
        handle.remove()
    assert "NaN/inf hidden states at site 0.ffn" in line and "--dtype" in line


def test_zero_vectors_are_reported(capsys, monkeypatch, tiny_gpt2):
    handle = _hooked(monkeypatch, tiny_gpt2, 1, torch.zeros_like)
    try:
        line = _error(capsys, ["measure", "--site", "1.ffn", *SMALL])
    finally:
        handle.remove()
    assert "site 1.ffn" in line and "4 zero vector(s)" in line


def _valid_shards(cache: Path) -> list[int]:
    key = json.loads((cache / "manifest.json").read_text())["meta"]["key"]
    store = ShardStore(cache, {"key": key})
    return [i for i in range(4) if store.load(i) is not None]


def _run_args(tiny_gpt2_dir, cache: Path) -> list[str]:
    return [
        *["measure", "--model", str(tiny_gpt2_dir), "--segments", "8", "--seq-len", "16"],
        *["--batch-size", "2", "--shard-segments", "2", "--cache-dir", str(cache), "--quiet"],
    ]


def test_disk_full_keeps_finished_shards(capsys, monkeypatch, tiny_gpt2_dir, tmp_path):
    savez, calls = np.savez, []

    def full_disk(file, **arrays):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        savez(file, **arrays)

    monkeypatch.setattr(np, "savez", full_disk)
    line = _error(capsys, _run_args(tiny_gpt2_dir, tmp_path))
    assert "No space left on device" in line and "shard_00001.npz" in line
    assert "finished shards are kept" in line
    assert _valid_shards(tmp_path) == [0]
    assert not list(tmp_path.glob(".shard_*"))  # the half-written temp file is gone
    monkeypatch.setattr(np, "savez", savez)
    assert main(_run_args(tiny_gpt2_dir, tmp_path)) == 0  # space is back: it resumes
    assert _valid_shards(tmp_path) == [0, 1, 2, 3]


def test_ctrl_c_keeps_finished_shards_and_exits_130(capsys, monkeypatch, tiny_gpt2_dir, tmp_path):
    ex = importlib.import_module("repdisp.core.extract")  # the package attribute is the function
    forward, calls = ex._forward_batch, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return forward(*args)

    monkeypatch.setattr(ex, "_forward_batch", interrupted)
    assert main(_run_args(tiny_gpt2_dir, tmp_path)) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "interrupted; finished shards are kept and the same command resumes" in err
    assert _valid_shards(tmp_path) == [0, 1]


def _pickle_folder(tiny_gpt2_dir, folder: Path, extra: object | None = None) -> Path:
    from repdisp.core.models import load_model

    shutil.copytree(tiny_gpt2_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    state = load_model(str(tiny_gpt2_dir), "cpu", "float32").model.state_dict()
    if extra is not None:
        state["extra"] = extra
    torch.save(state, folder / "pytorch_model.bin")
    return folder


class _Payload:
    """Unpickling this would run a shell command (the attack weights_only=True blocks)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_weights_need_allow_pickle_and_load_tensors_only(capsys, tiny_gpt2_dir, tmp_path):
    plain = _pickle_folder(tiny_gpt2_dir, tmp_path / "plain")
    line = _error(capsys, ["measure", "--model", str(plain), *SMALL])
    assert "pytorch_model.bin" in line and "--allow-pickle" in line
    assert main(["measure", "--model", str(plain), "--allow-pickle", *SMALL]) == 0
    capsys.readouterr()

    marker = tmp_path / "pwned"
    evil = _pickle_folder(tiny_gpt2_dir, tmp_path / "evil", _Payload(marker))
    line = _error(capsys, ["measure", "--model", str(evil), "--allow-pickle", *SMALL])
    assert "refused to unpickle" in line and "weights_only=True" in line
    assert not marker.exists()


def test_remote_code_runs_only_with_the_flag(capsys, tiny_gpt2_dir, tmp_path):
    folder, marker = tmp_path / "remote", tmp_path / "ran"
    shutil.copytree(tiny_gpt2_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "custom-gpt", "auto_map": {"AutoConfig": "custom.Config"}}
    config["auto_map"]["AutoModelForCausalLM"] = "custom.Model"
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import GPT2Config, GPT2LMHeadModel\n"
        "class Config(GPT2Config):\n    model_type = 'custom-gpt'\n"
        "class Model(GPT2LMHeadModel):\n    config_class = Config\n"
    )
    line = _error(capsys, ["measure", "--model", str(folder), *SMALL])
    assert "custom code" in line and "--trust-remote-code" in line
    assert not marker.exists()


# --- property-based checks of the geometry functions -------------------------------------

_shapes = st.tuples(st.integers(2, 24), st.integers(1, 12))


@st.composite
def _matrices(draw):
    n, d = draw(_shapes)
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 1e3, 1e6]))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * scale
    dup = draw(st.integers(0, n - 1))
    x[:dup] = x[dup]  # duplicates (identical vectors) are allowed and common
    x[np.linalg.norm(x, axis=1) == 0] = scale  # no zero rows
    return x


def _brute_force(x: np.ndarray) -> float:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.triu_indices(len(x), k=1)
    return float(np.mean(1.0 - np.sum(u[i] * u[j], axis=1)))


_fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fast
@given(_matrices(), st.integers(1, 23), st.floats(1e-3, 1e3))
def test_geometry_properties(x, cut, factor):
    d = dispersion(x)
    assert -1e-12 <= d <= 2 + 1e-12
    assert d == pytest.approx(_brute_force(x), abs=1e-9)
    cut = min(cut, len(x) - 1)
    merged = CosineStats().update(x[:cut]).merge(CosineStats().update(x[cut:]))
    assert merged.dispersion == pytest.approx(d, abs=1e-12)
    assert merged.count == len(x)
    row_scales = np.linspace(1.0, factor, len(x))[:, None]  # cosine ignores each row's length
    assert dispersion(x * row_scales) == pytest.approx(d, abs=1e-9)
    scores = per_example_scores(x)
    assert scores.mean() == pytest.approx(d, abs=1e-9)  # mean over rows of the row means


@_fast
@given(st.integers(2, 30), st.integers(1, 8))
def test_identical_vectors_have_zero_dispersion(n, d):
    x = np.tile(np.arange(1.0, d + 1.0), (n, 1))
    assert dispersion(x) == pytest.approx(0.0, abs=1e-12)
    assert dispersion(np.vstack([x[:1], -x[:1]])) == pytest.approx(2.0, abs=1e-12)
