"""The CLI's one error path (exit 2 for the user's input, exit 1 and one line for a bug), the
strict text readers checked against hand-written expected strings, ``hf:`` loading options, and
the argparse range validators."""

from __future__ import annotations

import argparse
import json
import sys
import types

import pytest

from repdisp.cli import main
from repdisp.commands import checks
from repdisp.core.corpus import load_texts
from repdisp.core.errors import RepdispError

BUG = "(this is a bug; rerun with REPDISP_DEBUG=1 for the traceback)"


def _boom():
    raise ZeroDivisionError("boom\nsecond line")


def test_unexpected_exception_is_one_line_exit_1(capsys, monkeypatch):
    monkeypatch.delenv("REPDISP_DEBUG", raising=False)
    monkeypatch.setattr("repdisp.core.models.list_bundled", _boom)
    assert main(["models", "list"]) == 1
    err = capsys.readouterr().err
    assert err == f"repdisp: internal error: ZeroDivisionError: boom {BUG}\n"


def test_repdisp_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv("REPDISP_DEBUG", "1")
    monkeypatch.setattr("repdisp.core.models.list_bundled", _boom)
    assert main(["models", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "in _boom" in err and "ZeroDivisionError: boom" in err
    assert err.splitlines()[-1] == f"repdisp: internal error: ZeroDivisionError: boom {BUG}"


def test_user_errors_are_exit_2(capsys, monkeypatch, tmp_path):
    """Exceptions a user's file causes, raised anywhere, are one ``repdisp: error`` line."""
    import yaml

    monkeypatch.delenv("REPDISP_DEBUG", raising=False)
    cases = [
        (FileNotFoundError(2, "No such file or directory", "x.npz"), "No such file or directory"),
        (PermissionError(13, "Permission denied", "/p/q.json"), "Permission denied (/p/q.json)"),
        (json.JSONDecodeError("Expecting value", "{", 1), "invalid JSON input: Expecting value"),
        (yaml.YAMLError("mapping values are not allowed"), "invalid YAML: mapping values"),
        (
            b"\xe9".decode("utf-8", "replace") and UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "x"),
            "not valid UTF-8",
        ),
    ]
    for exc, words in cases:

        def raise_it(exc=exc):
            raise exc

        monkeypatch.setattr("repdisp.core.models.list_bundled", raise_it)
        assert main(["models", "list"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("repdisp: error: ") and err.count("\n") == 1, err
        assert words in err, err


def test_text_files_read_as_text_mode(tmp_path):
    """BOM dropped, CRLF and CR as LF, exactly as Python's text mode gives them."""
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfone\r\ntwo\rthree\n")
    expected = (tmp_path / "a.txt").open(encoding="utf-8-sig").read()
    assert load_texts(str(tmp_path / "a.txt")) == [expected] == ["one\ntwo\nthree\n"]


def test_jsonl_keeps_line_separators_inside_strings(tmp_path):
    """U+2028 and \\x1c inside a JSON string are text, not line ends (str.splitlines would cut)."""
    docs = ["a\u2028b", "c\x1cd", "e\r\nf"]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\r\n" for d in docs))
    assert load_texts(str(tmp_path / "a.jsonl")) == docs  # "\r\n" escaped in JSON is kept


def test_csv_cell_of_any_size(tmp_path):
    cell = "x" * 300_000 + "\r\ny"  # over csv's 128 KiB default limit
    (tmp_path / "a.csv").write_text(f'id,text\n1,"{cell}"\n', newline="")
    assert load_texts(str(tmp_path / "a.csv")) == ["x" * 300_000 + "\ny"]


@pytest.mark.parametrize(
    "value, kind",
    [
        (None, "null"),
        (7, "a number (int)"),
        (1.5, "a number (float)"),
        (True, "a boolean (bool)"),
        (["a"], "a list"),
        ({"a": 1}, "an object"),
    ],
)
def test_non_string_text_is_named(tmp_path, value, kind):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n\n" + json.dumps({"text": value}) + "\n")
    with pytest.raises(RepdispError) as e:
        load_texts(str(path))
    assert str(e.value) == f"{path}: line 3: field 'text' is {kind}, not a string"


class _FakeDatasets(types.ModuleType):
    """Records load_dataset calls; raises ``error`` or returns ``["fine", None]``."""

    def __init__(self, error=None):
        super().__init__("datasets")
        self.calls, self.error = [], error

    def load_dataset(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.error:
            raise self.error
        return _Dataset(["fine", None])


class _Dataset:
    column_names = ["text"]

    def __init__(self, texts):
        self.texts = texts

    def __getitem__(self, name):
        return self.texts


@pytest.fixture
def fake_datasets(monkeypatch):
    def install(error=None):
        fake = _FakeDatasets(error)
        monkeypatch.setitem(sys.modules, "datasets", fake)
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # no hub probe before the stand-in
        return fake

    return install


def test_hf_split_and_real_error_shown(capsys, fake_datasets, tiny_gpt2_dir):
    fake = fake_datasets(ValueError("Unknown split \"train\". Should be one of ['test'].\nmore"))
    args = ["measure", "--model", str(tiny_gpt2_dir), "--data", "hf:org/set:cfg", "--no-cache"]
    assert main([*args, "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "repdisp: error: cannot load dataset 'org/set' split 'train': ValueError: "
        "Unknown split \"train\". Should be one of ['test'].\n"
    )
    assert fake.calls == [(("org/set", "cfg"), {"split": "train"})]  # no trust_remote_code
    assert main([*args, "--trust-remote-code"]) == 2
    assert fake.calls[-1] == (("org/set", "cfg"), {"split": "test", "trust_remote_code": True})
    capsys.readouterr()


def test_hf_values_must_be_strings(fake_datasets):
    fake = fake_datasets()
    with pytest.raises(RepdispError, match="dataset 'x': record 2: field 'text' is null"):
        load_texts("hf:x", trust_remote_code=False)
    assert fake.calls == [(("x", None), {"split": "test"})]


@pytest.mark.parametrize(
    "parse, text, value",
    [
        (checks.positive_int, "3", 3),
        (checks.nonneg_int, "0", 0),
        (checks.seed, "0", 0),
        (checks.seed, str(2**32 - 1), 2**32 - 1),
        (checks.unit_float, "1", 1.0),
        (checks.unit_float, "0", 0.0),
        (checks.fraction, "1", 1.0),
        (checks.positive_float, "1e-9", 1e-9),
        (checks.int_list(2), "2,5, 9", [2, 5, 9]),
        (checks.float_list(checks.unit_float), "0,.5", [0.0, 0.5]),
    ],
)
def test_checks_accept(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize(
    "parse, text, message",
    [
        (checks.positive_int, "0", "must be at least 1, got 0"),
        (checks.int_at_least(2), "1", "must be at least 2, got 1"),
        (checks.positive_int, "1.5", "expected an integer, got '1.5'"),
        (checks.seed, "-1", "must be in 0..2**32-1, got -1"),
        (checks.seed, str(2**32), "must be in 0..2**32-1"),
        (checks.unit_float, "1.0001", "must be in [0, 1], got 1.0001"),
        (checks.unit_float, "nan", "expected a finite number, got 'nan'"),
        (checks.fraction, "0", "must be in (0, 1], got 0"),
        (checks.float_in(0, 1, high_open=True), "1", "must be in [0, 1), got 1"),
        (checks.positive_float, "0", "must be greater than 0, got 0"),
        (checks.int_list(2), "4,1", "must be at least 2, got 1 (in '4,1')"),
        (checks.int_list(1), " , ", "expected a comma list of integers"),
        (checks.nonempty("a file"), "  ", "is empty: give a file"),
    ],
)
def test_checks_refuse(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as e:
        parse(text)
    assert message in str(e.value)


def test_argparse_error_is_usage_and_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["measure", "--segments", "1"])
    assert e.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("usage: repdisp measure")
    assert lines[-1] == "repdisp measure: error: argument --segments: must be at least 2, got 1"
    assert all(line.startswith(("usage:", " ")) for line in lines[:-1])
