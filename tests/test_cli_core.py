"""The core CLI (`measure`, `sites`, `models list`): results on disk, and every bad input ending
in exit code 2 with one error line and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from repdisp.cli import main
from repdisp.core.corpus import make_segments
from repdisp.core.extract import extract
from repdisp.core.geometry import dispersion

RESULT_KEYS = {
    "kind", "type", "schema", "model", "data", "n_segments", "seq_len", "seed", "bos", "ppl",
    "median_ppl", "last_token_ppl", "median_last_token_ppl", "sites", "notes", "provenance", "run",
}  # fmt: skip
SITE_KEYS = {"site", "requested", "pooling", "dispersion", "ci_low", "ci_high"}


def error_lines(stderr: str) -> list[str]:
    """stderr without transformers' weight-loading progress bar (printed before any error)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and "Loading weights" not in ln]


def assert_one_line_error(code: int, stderr: str, match: str) -> None:
    lines = error_lines(stderr)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("repdisp: error: "), lines
    assert match in lines[0], lines[0]


@pytest.fixture
def tiny_measure(tiny_gpt2_dir):
    """``repdisp measure`` on the tiny model, small and without shards."""
    base = ["measure", "--model", str(tiny_gpt2_dir), "--segments", "4", "--seq-len", "16"]
    return base + ["--no-cache", "--quiet", "--bootstrap", "50"]


def test_measure_writes_json(tiny_measure, tmp_path, capsys, tiny_gpt2):
    out = tmp_path / "r"
    args = ["--site", "final", "--site", "-1.attn", "--out", str(out)]
    assert main(tiny_measure + args) == 0
    assert "perplexity" in capsys.readouterr().out
    r = json.loads((out / "measure.json").read_text())
    assert set(r) == RESULT_KEYS
    assert (r["n_segments"], r["seq_len"], r["bos"], r["data"]) == (4, 16, False, "python-docs")
    assert [s["site"] for s in r["sites"]] == ["1.attn", "final"]
    # the numbers are those of the library on the same segments
    segs = make_segments(tiny_gpt2.tokenizer, "python-docs", 4, 16, seed=0)
    ex = extract(tiny_gpt2, segs, ["1.attn", "final"], "last", cache=False, progress=False)
    assert r["ppl"] == pytest.approx(float(np.exp(ex.mean_nll.mean())), rel=1e-6)
    assert r["median_ppl"] == pytest.approx(float(np.median(ex.seq_ppl)), rel=1e-6)
    assert r["last_token_ppl"] == pytest.approx(float(np.exp(ex.last_nll.mean())), rel=1e-6)
    assert r["run"]["seconds"] > 0 and "seconds" not in r
    for s in r["sites"]:
        assert set(s) == SITE_KEYS and s["pooling"] == "last"
        assert s["dispersion"] == pytest.approx(dispersion(ex.get(s["site"])), rel=1e-6)
        assert s["ci_low"] <= s["dispersion"] <= s["ci_high"]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "short.txt").write_text("Too short for one segment.")
    (tmp_path / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me br\xfbl\xe9e. ".encode("latin-1") * 40)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--data", "{d}/empty.txt"], "holds no text"),
        (["--data", "{d}/short.txt"], "fewer than one segment"),
        (["--data", "{d}/missing.txt"], "not found"),
        (["--data", "{d}/latin1.txt"], "not valid UTF-8"),
        (["--site", "7.attn"], "unknown site '7.attn'"),
        (["--model", "{d}/no-model"], "unknown model"),
        (["--seq-len", "100000"], "exceeds the model's context"),
        (["--segments", "100000"], "has only"),
    ],
)
def test_bad_input_one_line_exit_2(tiny_measure, files, capsys, args, match):
    code = main(tiny_measure + [a.format(d=files) for a in args])
    assert_one_line_error(code, capsys.readouterr().err, match)


def test_encoding_errors_replace_then_works(tiny_measure, files, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["--data", str(files / "latin1.txt"), "--encoding-errors", "replace", "--out", str(out)]
    assert main(tiny_measure + args) == 0
    r = json.loads((out / "measure.json").read_text())
    assert r["n_segments"] == 4 and np.isfinite(r["sites"][0]["dispersion"])


def test_subprocess_error_is_one_line(tiny_gpt2_dir, files):
    """A real ``python -m repdisp`` process: exit 2 and one error line on the real stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "repdisp", "measure", "--model", str(tiny_gpt2_dir)]
    cmd += ["--data", str(files / "latin1.txt"), "--segments", "3", "--seq-len", "12", "--no-cache"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=files, timeout=120)
    assert_one_line_error(run.returncode, run.stderr, "not valid UTF-8")


def test_models_list(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "gemma3-270m" in out


@pytest.mark.slow
def test_sites_smollm2(smollm2, capsys):
    assert main(["sites", "--model", "smollm2-135m"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "30 blocks" in out[0] and "d=576" in out[0]
    assert out[1].split()[:2] == ["repdisp", "TransformerLens"]
    names = [ln.split()[0] for ln in out[2:]]
    blocks = [f"{i}.{k}" for i in range(30) for k in ("attn_out", "attn", "mlp_out", "ffn")]
    assert names == ["tok_embed", "pos_embed", "embed", *blocks, "final_normalized", "final"]


@pytest.mark.slow
def test_measure_smollm2_tiny_run(smollm2, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["measure", "--model", "smollm2-135m", "--device", "cpu", "--segments", "4"]
    args += ["--seq-len", "32", "--site", "15", "--no-cache", "--quiet", "--out", str(out)]
    assert main(args) == 0
    r = json.loads((out / "measure.json").read_text())
    segs = make_segments(smollm2.tokenizer, "python-docs", 4, 32, seed=0)
    ex = extract(smollm2, segs, "15", "last", cache=False, progress=False)
    assert r["ppl"] == pytest.approx(float(np.exp(ex.mean_nll.mean())), rel=1e-5)
    assert r["sites"][0]["dispersion"] == pytest.approx(dispersion(ex.get("15.ffn")), rel=1e-5)
