"""``knnlm eval`` verifies the datastore it opens: sizes, shapes and per-shard records always,
every checksum with ``--verify``; each fault (scrambled or truncated files, corrupt or missing
manifest, missing or garbage index, bad --k / --lmbda) is one error line, exit 2, and the
datastore's files are left as they were."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from repdisp.applications.knnlm import Datastore
from repdisp.cli import main
from repdisp.core.errors import RepdispError

COMMON = ["--quiet", "--context", "32", "--stride", "16"]
HELD = "python-docs@500:620"


@pytest.fixture(scope="module")
def built(tiny_gpt2_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("knn") / "ds"
    args = ["knnlm", "build", "--model", str(tiny_gpt2_dir), *COMMON, "--data", "python-docs@0:300"]
    args += ["--site", "-1.attn,-1.ffn", "--shard-windows", "4", "--out", str(folder)]
    assert main(args) == 0
    return folder


@pytest.fixture
def ds(built, tmp_path):
    folder = tmp_path / "ds"
    shutil.copytree(built, folder)
    return folder


def _eval(model_dir, folder, *extra):
    args = ["knnlm", "eval", "--model", str(model_dir), *COMMON, "--datastore", str(folder)]
    return main(args + ["--data", HELD, "--k", "8", *extra])


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_error(capsys, match):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    err = [ln for ln in err if "Loading weights" not in ln]
    assert len(err) == 1 and err[0].startswith("repdisp: error: "), err
    assert "Traceback" not in err[0] and match in err[0], err[0]
    return err[0]


def scramble_values(folder):  # same size, same multiset of tokens: only checksums see it
    arr = np.load(folder / "values.npy", mmap_mode="r+")
    arr[:] = np.random.default_rng(0).permutation(np.asarray(arr))
    arr.flush()


def garbage_values(folder):
    arr = np.load(folder / "values.npy", mmap_mode="r+")
    arr[5:9] = [10**6, -3, 10**7, 42]
    arr.flush()


def truncate(name):
    def go(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:-6])

    return go


def flip_key_bytes(folder):
    path = folder / "keys.1.ffn.npy"
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4] = bytes(b ^ 0x5A for b in data[mid : mid + 4])
    path.write_bytes(bytes(data))


def edit_manifest(change):
    def go(folder):
        m = json.loads((folder / "manifest.json").read_text())
        change(m)
        (folder / "manifest.json").write_text(json.dumps(m))

    return go


def write(name, data: bytes):
    def go(folder):
        (folder / name).write_bytes(data)

    return go


def remove(name):
    def go(folder):
        (folder / name).unlink()

    return go


def same_size_not_npy(folder):
    size = (folder / "values.npy").stat().st_size
    (folder / "values.npy").write_bytes(b"x" * size)


# (id, corruption, extra flags, expected phrase in the one error line)
FAULTS = [
    ("scrambled-values-verify", scramble_values, ["--verify"], "values.npy rows 0-"),
    ("garbage-values-cheap", garbage_values, [], "fail their checksum"),
    ("scrambled-values-cheap", scramble_values, [], "values.npy rows 0-"),
    ("garbage-values-verify", garbage_values, ["--verify"], "fail their checksum"),
    ("truncated-values", truncate("values.npy"), [], "values.npy has"),
    ("truncated-keys", truncate("keys.1.ffn.npy"), [], "keys.1.ffn.npy has"),
    ("flipped-keys-verify", flip_key_bytes, ["--verify"], "keys.1.ffn.npy rows"),
    ("values-not-npy", same_size_not_npy, [], "values.npy is not a valid .npy"),
    ("manifest-not-json", write("manifest.json", b'{"meta": {'), [], "manifest.json is corrupt"),
    ("manifest-list", write("manifest.json", b"[1, 2]"), [], "manifest.json is corrupt"),
    ("manifest-missing", remove("manifest.json"), [], "is not a datastore (no manifest.json)"),
    (
        "manifest-no-n_keys",
        edit_manifest(lambda m: m["meta"].pop("n_keys")),
        [],
        "meta.n_keys",
    ),
    (
        "manifest-shard-record-gone",
        edit_manifest(lambda m: m["shards"].pop("1")),
        [],
        "shard 1 has no checksum record",
    ),
    (
        "manifest-wrong-n_keys",
        edit_manifest(lambda m: m["meta"].update(n_keys=m["meta"]["n_keys"] + 1)),
        [],
        "the manifest says",
    ),
    ("unfinished", edit_manifest(lambda m: m.update(complete=False)), [], "is unfinished"),
    ("index-missing", remove("index.1.ffn.faiss"), [], "index file index.1.ffn.faiss is missing"),
    ("index-garbage", write("index.1.ffn.faiss", b"junk" * 50), [], "not a readable FAISS"),
    (
        "index-garbage-verify",
        write("index.1.ffn.faiss", b"junk" * 50),
        ["--verify"],
        "index.1.ffn.faiss fails its checksum",
    ),
    # --k 0, --lmbda 1.5, --nprobe 0 are refused while parsing (tests/test_bad_input_matrix.py)
]


@pytest.mark.parametrize("corrupt,extra,match", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_datastore_fault_is_one_line(tiny_gpt2_dir, ds, capsys, corrupt, extra, match):
    if corrupt is not None:
        corrupt(ds)
    before = _snapshot(ds)
    assert _eval(tiny_gpt2_dir, ds, *extra) == 2
    _one_error(capsys, match)
    assert _snapshot(ds) == before  # nothing repaired or rewritten behind the user's back


def test_missing_datastore_folder(tiny_gpt2_dir, tmp_path, capsys):
    assert _eval(tiny_gpt2_dir, tmp_path / "nope") == 2
    _one_error(capsys, "not found")


def test_scrambled_values_are_caught_without_verify(ds):
    """A permutation of the values keeps sizes and records; the values' checksums (checked at
    every open, 4 bytes a key) see it, so no quiet wrong perplexity (exit 0 before)."""
    scramble_values(ds)
    with pytest.raises(RepdispError, match="fail their checksum"):
        Datastore.open(ds)


def test_intact_datastore_verifies_and_evaluates_the_same(tiny_gpt2_dir, ds, tmp_path, capsys):
    store = Datastore.open(ds, verify=True)
    assert all("sha256" in store.manifest["index"][s] for s in store.sites)
    assert _eval(tiny_gpt2_dir, ds, "--out", str(tmp_path / "a")) == 0
    assert _eval(tiny_gpt2_dir, ds, "--verify", "--out", str(tmp_path / "b")) == 0
    a = json.loads((tmp_path / "a" / "knnlm_eval.json").read_text())
    b = json.loads((tmp_path / "b" / "knnlm_eval.json").read_text())
    assert [s["knn_ppl"] for s in a["sites"]] == [s["knn_ppl"] for s in b["sites"]]
    assert a["base_ppl"] == b["base_ppl"]


def test_corrupt_manifest_at_build_is_one_line(tiny_gpt2_dir, ds, capsys):
    (ds / "manifest.json").write_text("{broken")
    args = ["knnlm", "build", "--model", str(tiny_gpt2_dir), *COMMON, "--data", "python-docs@0:300"]
    assert main(args + ["--site", "-1.attn,-1.ffn", "--shard-windows", "4", "--out", str(ds)]) == 2
    _one_error(capsys, "manifest.json is corrupt")


@pytest.mark.parametrize("command", ["build", "eval"])
def test_context_longer_than_the_model(tiny_gpt2_dir, built, tmp_path, capsys, command):
    # the tiny GPT-2 has 256 positions
    args = ["knnlm", command, "--model", str(tiny_gpt2_dir), "--quiet", "--context", "300"]
    if command == "build":
        args += ["--data", "python-docs@0:300", "--out", str(tmp_path / "new")]
    else:
        args += ["--datastore", str(built), "--data", HELD]
    assert main(args) == 2
    assert "256" in _one_error(capsys, "--context 300")
    assert not (tmp_path / "new").exists()


def test_datastore_of_an_edited_model_is_refused(tiny_gpt2_dir, tmp_path, capsys):
    """Same model folder, one weight changed since the build: the content identity differs."""
    from safetensors.torch import load_file, save_file

    model, store = tmp_path / "model", tmp_path / "ds"
    shutil.copytree(tiny_gpt2_dir, model)
    args = ["knnlm", "build", "--model", str(model), *COMMON, "--data", "python-docs@0:100"]
    assert main(args + ["--out", str(store)]) == 0
    tensors = load_file(model / "model.safetensors")
    tensors["transformer.h.1.mlp.c_fc.bias"] += 0.01
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    assert _eval(model, store) == 2
    _one_error(capsys, f"was built with another version of {model} (its weights")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"k": 0}, "--k must be at least 1"),
        ({"nprobe": 0}, "--nprobe must be at least 1"),
        ({"lmbda": 1.5}, r"--lmbda and --lmbda-grid values must be in \[0, 1\]"),
        ({"lmbda_grid": [0.0, -0.1]}, r"must be in \[0, 1\]"),
        ({"temperature": 0.0}, "--temperature must be positive"),
        ({"context": 300}, "exceeds the model's context of 256"),
    ],
)
def test_library_checks_its_arguments(built_lm, built, kwargs, match):
    """The same faults through the Python API (the CLI refuses them while parsing)."""
    from repdisp.applications.knnlm import evaluate_knnlm

    tokens = np.arange(100) % 50
    with pytest.raises(RepdispError, match=match):
        evaluate_knnlm(built_lm, Datastore.open(built), tokens, progress=False, **kwargs)


@pytest.fixture(scope="module")
def built_lm(tiny_gpt2_dir):
    from repdisp.core.models import load_model

    return load_model(str(tiny_gpt2_dir), "cpu", "float32")
