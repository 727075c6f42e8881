"""Past one device.

- ``Dist.gather_shards`` / ``extract(dist=...)``: each rank computes only its shards and rank 0
  gets every row at its place (against the one-process extraction, bit-equal); the others get
  nothing.
- ``repdisp layers`` and ``repdisp reproduce --only fig3,fig5`` under ``torchrun
  --nproc_per_node 2`` (gloo, real processes) write the same results as one process (every
  JSON value except the ``run`` block and the command line, and every CSV, equal; the test
  requires 1e-12).
- ``--model-args device_map=auto,max_memory=...,offload_folder=...``: the tiny model split by
  accelerate between the CPU and the disk (offloaded weights come in at each module's forward)
  gives every site's vectors and both perplexities of the plain load (requires 1e-6 in float32;
  they come out bit-equal), and the CLI writes the same result.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from repdisp import extract, load_model, make_segments
from repdisp.cli import main
from repdisp.core.distributed import Dist
from repdisp.core.errors import RepdispError
from repdisp.core.loading import parse_max_memory

ROOT = Path(__file__).resolve().parents[1]
SITES = "embed,0.attn,0.ffn,1.attn,1.ffn,final,final_normalized"
POOLS = ["last", "mean", "within", "tokens"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), "-m", "repdisp", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _close(a, b, path: str = "") -> None:
    """Equal JSON trees; numbers to 1e-12 (relative, or absolute near zero)."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), path
        for k in a:
            _close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and not (math.isnan(a) and math.isnan(b)):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12), path
    else:
        assert a == b, path


def _result(path: Path) -> dict:
    doc = json.loads(path.read_text())
    doc.pop("run", None)  # date, host, wall time
    for key in ("command", "call"):  # --out differs
        doc.get("provenance", {}).pop(key, None)
    return doc


def _same_folders(one: Path, two: Path) -> int:
    """Every JSON/CSV result file of ``one`` is in ``two`` with the same values; their count."""
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.suffix in (".json", ".csv"))
    files = [f for f in files if f.name not in ("step_seconds.json", "floor_seconds.json")]  # wall times
    for f in files:
        if f.suffix == ".csv":
            assert (one / f).read_text() == (two / f).read_text(), f
        elif f.name.startswith("."):  # a step marker: its parameters
            assert json.loads((one / f).read_text()) == json.loads((two / f).read_text()), f
        else:
            _close(_result(one / f), _result(two / f), str(f))
    return len(files)


# ------------------------------------------------------------------ the gather, in one process


class FakeGroup(Dist):
    """Rank ``rank`` of ``world_size``, whose gather hands rank 0 what the others would send
    (rows of a reference extraction) and the others None."""

    def __init__(self, rank: int, world: int, others):
        super().__init__(rank, world, rank)
        object.__setattr__(self, "others", others)
        object.__setattr__(self, "sent", [])

    def gather(self, obj, device):
        self.sent.append(obj)
        if not self.is_main:
            return None
        first = len(self.sent) - 1
        return [obj] + [self.others(first * self.world_size + r) for r in range(1, self.world_size)]


def test_extract_gathers_every_rank_shards_in_segment_order(tiny_gpt2, tiny_tokenizer, monkeypatch):
    import repdisp.core.extract as ext

    segs = make_segments(tiny_tokenizer, "python-docs", 22, 16, seed=3)
    kw = dict(batch_size=2, cache=False, progress=False, shard_segments=4)
    whole = extract(tiny_gpt2, segs, "0.attn,final", ["last", "within"], **kw)
    bounds = [(a, min(22, a + 4)) for a in range(0, 22, 4)]  # 6 shards, the last of 2 rows

    def shard(i):
        if i >= len(bounds):
            return None
        a, b = bounds[i]
        keys = [*whole.vectors, "mean_nll", "last_nll"]
        full = whole.vectors | {"mean_nll": whole.mean_nll, "last_nll": whole.last_nll}
        return {k: full[k][a:b] for k in keys}

    seen: list[int] = []
    real = ext._forward_batch
    monkeypatch.setattr(
        ext, "_forward_batch", lambda lm, ids, *a: seen.append(ids[0, 0]) or real(lm, ids, *a)
    )
    for rank in range(3):
        seen.clear()
        group = FakeGroup(rank, 3, shard)
        got = extract(tiny_gpt2, segs, "0.attn,final", ["last", "within"], dist=group, **kw)
        mine = [i for i in range(6) if i % 3 == rank]  # shards rank, rank + 3
        assert seen == [segs.ids[b, 0] for i in mine for b in range(*bounds[i], 2)]
        assert len(group.sent) == 2  # two rounds of three shards
        for (a, b), sent in zip((bounds[i] for i in mine), group.sent, strict=True):
            np.testing.assert_array_equal(sent["final/last"], whole.get("final")[a:b])
        if rank == 0:
            assert list(got.vectors) == list(whole.vectors)
            for k, v in whole.vectors.items():
                np.testing.assert_array_equal(got.vectors[k], v)
            np.testing.assert_array_equal(got.mean_nll, whole.mean_nll)
            np.testing.assert_array_equal(got.last_nll, whole.last_nll)
        else:
            assert got.vectors == {} and got.mean_nll is None and got.sites == whole.sites


def test_one_process_group_gathers_itself():
    rows = [(0, 3), (3, 5)]
    out = Dist().gather_shards(lambda i: {"x": np.arange(*rows[i])[:, None] * 1.0}, rows, None)
    np.testing.assert_array_equal(out["x"][:, 0], np.arange(5))
    assert Dist().gather("a", None) == ["a"]


# ------------------------------------------------------------------ torchrun, real processes


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernels of the 1-thread torchrun workers
    yield
    torch.set_num_threads(before)


LAYERS = ["--data", "python-docs", "--segments", "600", "--seq-len", "16", "--batch-size", "8"]
LAYERS += ["--bin-size", "20", "--bins", "5", "--bootstrap", "50", "--stats-reps", "30"]
LAYERS += ["--permutations", "30", "--quiet"]


@pytest.mark.slow
def test_layers_under_torchrun_equals_one_process(tiny_gpt2_dir, tmp_path, one_thread):
    # 600 segments: shards of 256 are 3, so rank 0 computes shards 0 and 2, rank 1 shard 1
    model = ["layers", "--model", str(tiny_gpt2_dir), *LAYERS]
    assert main([*model, "--no-cache", "--out", str(tmp_path / "one")]) == 0
    env = _env() | {"REPDISP_HOME": str(tmp_path / "home")}
    proc = _torchrun([*model, "--out", str(tmp_path / "two")], env)
    assert proc.stdout.count("wrote") == 1  # rank 0 alone writes
    shards = sorted(p.name for p in (tmp_path / "home" / "runs").glob("*/shard_*.npz"))
    assert shards == [f"shard_{i:05d}.npz" for i in range(3)]  # each rank cached its own
    assert _same_folders(tmp_path / "one", tmp_path / "two") == 4  # json + 3 csv


GRID = """
models: ["{model}"]
data: [python-docs, "{words}"]
segments: 600
seq_len: 16
dtype: float32
device: cpu
batch_size: 8
bin_size: 20
bins: 5
curve_bins: 6
stats_reps: 30
permutations: 30
layer_stats_reps: 20
bootstrap: 50
contexts: [16, 8]
pushaway: null
knn: null
gap: null
mc: null
probe: null
sublayers: null
random_init: null
knnlm: null
"""


@pytest.mark.slow
def test_reproduce_under_torchrun_equals_one_process(
    tiny_gpt2_dir, tmp_path, monkeypatch, one_thread
):
    # two cells: rank 0 ends the shared pass holding the first; the second comes back from the
    # shard cache (a corpus of its own: the python docs' words in reverse order)
    from pydoc_data.topics import topics

    words = tmp_path / "words.txt"
    words.write_text(" ".join(reversed(" ".join(topics[k] for k in sorted(topics)).split())))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(GRID.format(model=tiny_gpt2_dir, words=words))
    args = ["reproduce", "--config", str(cfg), "--only", "fig3,fig5", "--quiet", "--out"]
    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "h1"))
    assert main([*args, str(tmp_path / "one")]) == 0
    env = _env() | {"REPDISP_HOME": str(tmp_path / "h2")}
    proc = _torchrun([*args, str(tmp_path / "two")], env)
    assert proc.stdout.count("wrote") == 1
    for stem in ("python-docs", "words"):
        cell = next((tmp_path / "two").glob(f"*/{stem}"))
        names = {p.name for p in cell.glob("[!.]*.json")}
        assert names == {"ppl_vs_dispersion.json", "layers.json"}
    # claims.json/.csv, config.json, per cell 2 results, 2 step markers and 7 CSV tables
    assert _same_folders(tmp_path / "one", tmp_path / "two") == 25
    # the wall time, and the per-step seconds and floors (a table: step | s | floor s | ratio)
    timed = re.compile(r"^Wall time|: [0-9.]+ s$|^\| .* \| [0-9.]+ \| [0-9.]+ \| .* \|$|^Whole run")
    one, two = (
        [
            ln
            for ln in (tmp_path / d / "findings.md").read_text().split("\n")
            if not timed.search(ln)
        ]
        for d in ("one", "two")
    )
    assert one == two and any("Fig. 5" in ln for ln in one)
    seconds = json.loads((tmp_path / "two" / "step_seconds.json").read_text())
    assert (
        sorted(k.split("/")[-1] for k in seconds)
        == ["layers", "layers"] + ["ppl_vs_dispersion"] * 2
    )


# ------------------------------------------------------------------ device_map=auto, offloaded


def test_offloaded_model_reads_every_site_at_the_plain_tensors(tiny_gpt2_dir, tmp_path):
    plain = load_model(str(tiny_gpt2_dir), "cpu", "float32")
    total = sum(p.numel() * p.element_size() for p in plain.model.parameters())
    segs = make_segments(plain.tokenizer, "python-docs", 12, 24, seed=0)
    kw = dict(batch_size=4, cache=False, progress=False)
    ref = extract(plain, segs, SITES, POOLS, **kw)
    places = []
    for share in (0.999, 0.75, 0.25):  # split inside the blocks, blocks on disk, all on disk
        lm = load_model(
            str(tiny_gpt2_dir),
            device_map="auto",
            max_memory={"cpu": int(total * share)},
            offload_folder=str(tmp_path / f"off{share}"),
            dtype="float32",
        )
        where = set(lm.model.hf_device_map.values())
        assert "disk" in where  # read from the safetensors file (or offload_folder) at forward
        assert next(lm.model.transformer.h[-1].parameters()).is_meta  # not in memory
        places.append(where)
        assert lm.identity == plain.identity  # placement is not identity: shards are shared
        ex = extract(lm, segs, SITES, POOLS, **kw)
        assert list(ex.vectors) == list(ref.vectors)
        for k, v in ref.vectors.items():
            np.testing.assert_allclose(ex.vectors[k], v, rtol=0, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(ex.mean_nll, ref.mean_nll, rtol=1e-6, atol=0)
        np.testing.assert_allclose(ex.last_nll, ref.last_nll, rtol=1e-6, atol=0)
    assert {"cpu", "disk"} in places  # at least one real split between memory and disk


def test_device_map_command_line_gives_the_plain_result(tiny_gpt2_dir, tmp_path):
    base = ["layers", "--model", str(tiny_gpt2_dir), "--data", "python-docs", "--segments", "40"]
    base += ["--seq-len", "16", "--bin-size", "5", "--bins", "4", "--bootstrap", "20"]
    base += ["--stats-reps", "10", "--permutations", "10", "--no-cache", "--quiet", "--out"]
    assert main([*base, str(tmp_path / "plain")]) == 0
    offload = f"device_map=auto,max_memory=cpu:120KB,offload_folder={tmp_path / 'o'}"
    assert main([*base, str(tmp_path / "split"), "--model-args", offload]) == 0
    assert _same_folders(tmp_path / "plain", tmp_path / "split") == 4


def test_max_memory_forms_and_bad_values(tiny_gpt2_dir, capsys):
    assert parse_max_memory("0:20GiB; cpu:60GiB") == {0: "20GiB", "cpu": "60GiB"}
    assert parse_max_memory({"cuda:1": "2GB", "disk": 10**9}) == {1: "2GB", "disk": 10**9}
    assert parse_max_memory(None) is None
    for bad, msg in (
        ("cpu", "expected DEVICE:SIZE"),
        ("gpu:2GB", "unknown device 'gpu'"),
        ("cpu:lots", "bad size 'lots' for cpu"),
    ):
        with pytest.raises(RepdispError, match=msg):
            parse_max_memory(bad)
    with pytest.raises(RepdispError, match="need device_map=auto"):
        load_model(str(tiny_gpt2_dir), offload_folder="x")
    args = ["measure", "--model", str(tiny_gpt2_dir), "--segments", "4", "--seq-len", "8"]
    assert main([*args, "--model-args", "device_map=auto,max_memory=cpu:lots"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "repdisp: error: max_memory: bad size 'lots' for cpu; e.g. 20GiB"
    ]
