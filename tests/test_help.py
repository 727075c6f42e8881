"""One CLI grammar: every command's --help, the shared flags, --version, site lists, fast help."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from repdisp.cli import COMMAND_GROUPS, _glue_negative_sites, build_parser, main
from repdisp.commands import options

SRC = Path(__file__).resolve().parents[1] / "src"


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
        return
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaves(sub, (*path, name))


COMMANDS = dict(leaves(build_parser()))


def options_of(parser: argparse.ArgumentParser):
    for a in parser._actions:
        if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help":
            yield a


def bare_help(action: argparse.Action) -> str:
    return re.sub(r" \(default: [^()]*(\([^()]*\)[^()]*)*\)$", "", action.help or "")


def test_the_cli_has_every_command():
    expected = {c for cs in COMMAND_GROUPS.values() for c in cs} - {"reproduce"}
    tops = {name.split()[0] for name in COMMANDS}
    assert expected <= tops, expected - tops
    assert {"knnlm build", "knnlm eval", "knnlm select", "models list"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_has_help_and_defaults_are_shown_one_way(name):
    parser = COMMANDS[name]
    text = parser.format_help()  # renders every %(...)s
    assert "usage: repdisp " + name in text
    for a in parser._actions:  # positional arguments too
        if not a.option_strings:
            assert a.help and a.help.strip(), f"{name} {a.dest}: no help text"
    for a in options_of(parser):
        flag = a.option_strings[0]
        assert a.help and a.help.strip(), f"{name} {flag}: no help text"
        rendered = parser._get_formatter()._get_help_string(a)
        # one way only: "(default: X)", never "(default X)", "default X" or a bare "(50)"
        assert not re.search(r"\(default [^:]|\bdefault \d|\(\d[\d.,]*\)\s*$", rendered), (
            f"{name} {flag}: {rendered!r}"
        )
        assert rendered.count("(default: ") <= 1, f"{name} {flag}: {rendered!r}"
        valued = a.nargs != 0 and not any(a.default is x for x in (None, False, True))
        if valued:
            assert "(default: " in rendered, f"{name} {flag}: default {a.default!r} not shown"


# flag -> commands where it means something else on purpose, with the reason
DIFFERENT = {
    "--data": {
        "accuracy-probe": "question files, not running text",
        "hard-slices": "question files, not running text",
        "knnlm select": "the datastore half of --data/--eval-data",
    },
    "--out": {
        "knnlm build": "a datastore folder that a rerun resumes",
        "finetune": "a checkpoint folder",
        "report": "where report.html goes",
        "train": "runs/training/NAME by default, where a run continues",
        "sweep": "runs/training/NAME by default, where a run continues",
    },
    "--seed": {"train": "initialisation and data order; the config's by default"},
    "--pooling": {"measure": "also offers token-level 'within' pooling"},
}
SAME_EVERYWHERE = [
    "--model",
    "--model-args",
    "--device",
    "--dtype",
    "--trust-remote-code",
    "--allow-pickle",
    "--data",
    "--text-field",
    "--encoding-errors",
    "--out",
    "--overwrite",
    "--seed",
    "--batch-size",
    "--quiet",
    "--no-cache",
    "--num-seeds",
    "--chunks",
    "--segments",
    "--seq-len",
    "--chunk-len",
    "--pooling",
    "--bootstrap",
]


@pytest.mark.parametrize("flag", SAME_EVERYWHERE)
def test_shared_flags_have_one_name_one_help_one_type(flag):
    seen: dict[tuple, list[str]] = {}
    for name, parser in COMMANDS.items():
        if name in DIFFERENT.get(flag, {}):
            continue
        for a in options_of(parser):
            if flag in a.option_strings:
                # the default may differ per command (sizes); the meaning and form may not
                key = (a.option_strings[0], a.dest, getattr(a.type, "__name__", None), a.choices)
                help_ = bare_help(a)
                if flag == "--out":  # "result folder for FILES (default: ...)": files differ
                    help_ = help_.split(" for ")[0]
                if flag in ("--data", "--model"):  # multi-source/-model commands add "; repeat"
                    help_ = help_.removesuffix("; repeat to join several")
                    help_ = help_.removesuffix("; SOURCE@START:END takes a token range")
                    help_ = help_.removesuffix("; repeat for several")
                seen.setdefault((*key, help_), []).append(name)
    assert len(seen) <= 1, f"{flag} differs: {seen}"


@pytest.mark.parametrize("flag", ["--model", "--device", "--dtype", "--text-field", "--batch-size"])
def test_shared_defaults_are_the_same(flag):
    defaults = set()
    for name, parser in COMMANDS.items():
        for a in options_of(parser):
            if flag in a.option_strings and a.default is not None:
                d = a.default[0] if isinstance(a.default, list) else a.default
                defaults.add((name, d) if name == "finetune" else d)
    plain = {d for d in defaults if not isinstance(d, tuple)}
    assert len(plain) == 1, defaults


def test_site_help_ends_with_the_shared_names():
    for name, parser in COMMANDS.items():
        for a in options_of(parser):
            if "--site" in a.option_strings:
                assert bare_help(a).endswith(options.SITE_NAMES), name
                assert "--sites" in a.option_strings  # the older spelling still parses


def _required_values(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for a in parser._actions:
        if a.required and a.option_strings:
            out += [a.option_strings[0], "x"]
        elif not a.option_strings and a.dest != "help" and a.nargs in (None, "+"):
            out.append("x")
    return out


@pytest.mark.parametrize(
    "name", [n for n, p in COMMANDS.items() if "--site" in p._option_string_actions]
)
def test_site_lists_parse_to_three_sites_everywhere(name):
    parser = COMMANDS[name]
    argv = ["--site", "a,b", "--site", "c", *_required_values(parser)]
    assert parser.parse_args(argv).sites == ["a", "b", "c"]
    argv = _glue_negative_sites(["--site", "-1.attn", "--sites", "final"])
    assert parser.parse_args(argv + _required_values(parser)).sites == ["-1.attn", "final"]


def test_site_list_helper():
    assert options.site_list(["a,b", " c ", ""]) == ["a", "b", "c"]
    assert options.site_list("x") == ["x"] and options.site_list(None) == []


def test_version(capsys):
    from importlib.metadata import PackageNotFoundError, version

    import repdisp

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    try:
        expected = version("repdisp")
    except PackageNotFoundError:
        expected = repdisp.__version__
    assert capsys.readouterr().out.strip() == f"repdisp {expected}"


def test_top_level_help_groups_commands_measure_first(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    heads = [text.index(f"  {g}:\n") for g in COMMAND_GROUPS if f"  {g}:\n" in text]
    assert heads == sorted(heads) and len(heads) == 5
    listed = re.findall(r"^    ([a-z-]+) ", text, re.M)
    assert listed[0] == "measure" and len(listed) == len(set(listed))
    assert listed != sorted(listed)


def test_parser_is_built_without_heavy_imports():
    code = (
        "import sys; from repdisp.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'scipy', 'transformers', 'matplotlib', 'numpy', "
        "'pandas', 'faiss') if m in sys.modules))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_constants_copied_into_commands_agree_with_the_library():
    from repdisp.applications import gap, mcqa
    from repdisp.commands import accuracy, finetune
    from repdisp.commands import gap as gap_cmd
    from repdisp.core import models
    from repdisp.training import finetune as ft

    assert (accuracy.TASKS, accuracy.FORMATS) == (mcqa.TASKS, mcqa.FORMATS)
    assert gap_cmd.DOMAINS == tuple(gap.DOMAINS) and gap_cmd.REFERENCES == tuple(gap.REFERENCES)
    assert gap_cmd.METRICS == gap.METRICS and finetune.METHODS == ft.METHODS
    assert options.DEFAULT_MODEL == models.DEFAULT_MODEL and options.DTYPES == models.DTYPES


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_devices_accepted(device):
    assert COMMANDS["measure"].parse_args(["--device", device]).device == device


@pytest.mark.parametrize(
    "argv",
    [
        ["--device", "gpu"],
        ["--model-args", "color=red"],
        ["--model-args", "revision"],
        ["--model-args", "dtype=float64"],
        ["--chunks", "1,x"],
    ],
)
def test_bad_values_are_argparse_errors(argv, capsys):
    parser = COMMANDS["knn-keys"]
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_model_args_parse():
    got = options.parse_model_args("revision=v1, adapter=./lora,attn-implementation=eager")
    assert got == {"revision": "v1", "adapter": "./lora", "attn_implementation": "eager"}
    args = COMMANDS["measure"].parse_args(["--model-args", "dtype=float16,device_map=auto"])
    assert args.model_args == {"dtype": "float16", "device_map": "auto"}


def test_old_spellings_still_parse():
    sel = COMMANDS["knnlm select"].parse_args(["--train", "a", "--eval", "b", "--seeds", "3"])
    assert (sel.data, sel.eval_data, sel.num_seeds) == (["a"], ["b"], 3)
    keys = COMMANDS["knn-keys"].parse_args(["--seeds", "4", "--chunks", "5,10"])
    assert (keys.num_seeds, keys.chunks) == (4, [5, 10])
    assert COMMANDS["layers"].parse_args(["--sites", "0,1"]).sites == ["0", "1"]


def test_out_guard_refuses_an_earlier_result_and_numbers_new_folders(tmp_path, monkeypatch):
    from repdisp.core.errors import RepdispError

    args = COMMANDS["measure"].parse_args(["--out", str(tmp_path / "r")])
    options.check_out(args, "measure.json")  # nothing there yet
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "measure.json").write_text("{}")
    (tmp_path / "r" / "gap.json").write_text("{}")
    with pytest.raises(RepdispError, match="--overwrite"):
        options.check_out(args, "measure.json")
    options.check_out(
        COMMANDS["measure"].parse_args(["--out", str(tmp_path / "r"), "--overwrite"]),
        "measure.json",
    )
    monkeypatch.setenv("REPDISP_OUT", str(tmp_path / "runs"))
    firsts = [options.out_dir(COMMANDS["measure"].parse_args([])) for _ in range(3)]
    assert [p.name for p in firsts] == ["measure-1", "measure-2", "measure-3"]
    assert options.out_dir(COMMANDS["gap"].parse_args(["--domain", "python"])).name == "gap-1"


@pytest.mark.parametrize("out", ["r.json", "page.html"])
def test_out_is_a_folder_not_a_file(out, tmp_path, capsys):
    assert main(["measure", "--out", str(tmp_path / out)]) == 2
    assert "--out takes a folder" in capsys.readouterr().err
    (tmp_path / "plain").write_text("x")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "plain")]) == 2
