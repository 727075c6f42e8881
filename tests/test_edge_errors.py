"""Bad input at the edges, each one line and exit 2 (it used to be a bug line, a wrong message or
a quiet wrong answer): a datastore manifest without its ``meta`` block, ``knnlm eval`` on a site
the store was not built for, ``report`` on a file or on a CSV with a field over csv's 131,072
character limit, an OSError or Ctrl-C before anything was finished (no "finished shards are
kept" then), and what ``--verify`` adds, in ``knnlm eval --help``."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest

from repdisp.cli import main

COMMON = ["--quiet", "--context", "32", "--stride", "16"]


@pytest.fixture(scope="module")
def store(tiny_gpt2_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("knn") / "ds"
    args = ["knnlm", "build", "--model", str(tiny_gpt2_dir), *COMMON, "--data", "python-docs@0:200"]
    assert main([*args, "--site", "1.ffn", "--shard-windows", "4", "--out", str(folder)]) == 0
    return folder


def _one_error(capsys, match: str) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    err = [ln for ln in err if "Loading weights" not in ln]
    assert len(err) == 1 and err[0].startswith("repdisp: error: "), err
    assert match in err[0], err[0]
    return err[0]


def test_build_over_a_manifest_without_meta(store, tiny_gpt2_dir, tmp_path, capsys):
    folder = tmp_path / "ds"
    shutil.copytree(store, folder)
    m = json.loads((folder / "manifest.json").read_text())
    del m["meta"]
    (folder / "manifest.json").write_text(json.dumps(m))
    args = ["knnlm", "build", "--model", str(tiny_gpt2_dir), *COMMON, "--data", "python-docs@0:200"]
    rc = main([*args, "--site", "1.ffn", "--shard-windows", "4", "--out", str(folder)])
    assert rc == 2  # was 1: internal error: KeyError: 'meta'
    _one_error(capsys, "manifest.json is corrupt (ValueError)")


def test_eval_on_a_site_the_store_lacks(store, tiny_gpt2_dir, tmp_path, capsys):
    args = ["knnlm", "eval", "--model", str(tiny_gpt2_dir), *COMMON, "--datastore", str(store)]
    args += ["--data", "python-docs@500:600", "--site", "0.attn", "--out", str(tmp_path / "e")]
    assert main(args) == 2
    line = _one_error(capsys, "was built for site(s) 1.ffn, not 0.attn")
    assert "FAISS" not in line  # it used to say the index was not a readable FAISS index


def test_report_on_a_file_and_on_a_huge_csv_field(tmp_path, capsys):
    f = tmp_path / "measure.json"
    f.write_text("{}")
    assert main(["report", str(f)]) == 2
    line = _one_error(capsys, "is a file: report takes the folder")
    assert "File exists" not in line and "shards" not in line
    folder = tmp_path / "res"
    folder.mkdir()
    (folder / "big.csv").write_text("a,b\n1," + "x" * 200_000 + "\n2,y\n")
    assert main(["report", str(folder)]) == 0  # was 1: field larger than field limit (131072)
    page = (folder / "report.html").read_text()
    assert "big.csv" in page and "<td>y</td>" in page.replace(" ", "")


def test_os_error_with_nothing_finished_does_not_claim_kept_shards(tiny_gpt2_dir, tmp_path, capsys):
    (tmp_path / "blocker").write_text("x")
    args = ["measure", "--model", str(tiny_gpt2_dir), "--data", "python-docs", "--segments", "8"]
    args += ["--seq-len", "16", "--no-cache", "--quiet", "--out", str(tmp_path / "blocker" / "o")]
    assert main(args) == 2
    line = _one_error(capsys, f"Not a directory ({tmp_path / 'blocker' / 'o'})")
    assert "finished shards" not in line


def test_ctrl_c_before_any_shard(tiny_gpt2_dir, tmp_path, capsys, monkeypatch):
    ex = importlib.import_module("repdisp.core.extract")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "_forward_batch", interrupted)
    args = ["measure", "--model", str(tiny_gpt2_dir), "--data", "python-docs", "--segments", "8"]
    args += ["--seq-len", "16", "--cache-dir", str(tmp_path / "sh"), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[-1] == "repdisp: interrupted; nothing was finished yet"


def test_verify_help_says_what_it_adds(capsys):
    with pytest.raises(SystemExit):
        main(["knnlm", "eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "also check the sha256 of every shard's keys and of every index file" in text
    assert "values' checksums are always checked" in text
