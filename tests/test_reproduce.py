"""repdisp reproduce end to end on a tiny model: results, the claims table and its verdict rule,
the findings page, and resume (a second run extracts nothing; a lost step reuses the shards)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from repdisp.cli import main
from repdisp.reproduce.mc import auroc
from repdisp.reproduce.verdict import verdict

ARC = [
    {
        "id": f"q{i}",
        "question": {
            "stem": f"Which word comes after w{i}?",
            "choices": [{"label": k, "text": f"w{(i + j) % 7}"} for j, k in enumerate("ABCD")],
        },
        "answerKey": "ABCD"[i % 4],
    }
    for i in range(24)
]


def test_verdict_rule_and_auroc():
    assert verdict(-0.3, -0.1, -1) == "supported"
    assert verdict(0.1, 0.3, -1) == "contradicted"
    assert verdict(-0.1, 0.2, -1) == "inconclusive at this N"
    assert verdict(0.1, 0.3, 1) == "supported"
    assert verdict(float("nan"), 1.0, 1).startswith("inconclusive")
    rng = np.random.default_rng(0)
    scores, wrong = rng.normal(size=50).round(1), rng.random(50) < 0.4  # ties included
    # brute force over every (wrong, right) pair: a lower score on the wrong one counts 1, a tie 1/2
    sw, sr = scores[wrong][:, None], scores[~wrong][None, :]
    expected = ((sw < sr) + 0.5 * (sw == sr)).mean()
    assert auroc(scores, wrong) == pytest.approx(expected, abs=1e-12)


@pytest.fixture
def grid(tiny_gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    arc = tmp_path / "arc.jsonl"
    arc.write_text("".join(json.dumps(q) + "\n" for q in ARC))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        f"""
models: ["{tiny_gpt2_dir}"]
data: [python-docs]
segments: 60
seq_len: 16
dtype: float32
device: cpu
pushaway: null
batch_size: 16
bin_size: 5
bins: 4
curve_bins: 6
stats_reps: 40
permutations: 40
layer_stats_reps: 20
bootstrap: 50
contexts: [16, 8]
knn: {{chunks: [4, 8], seeds: 3}}
gap: null
mc: [{{task: arc-challenge, data: "{arc}", limit: null}}]
probe: {{sample: 4, seeds: 2}}
sublayers: null
random_init: null
knnlm: null
"""
    )
    return cfg, tmp_path / "run"


def test_reproduce_end_to_end_and_resume(grid, monkeypatch, capsys):
    cfg, out = grid
    assert main(["reproduce", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    cell = next(out.glob("*/python-docs"))
    for name in ("ppl_vs_dispersion", "layers"):
        assert (cell / f"{name}.json").exists() and (cell / f"{name}_stats.csv").exists()
    ppl = json.loads((cell / "ppl_vs_dispersion.json").read_text())
    assert [(s["perplexity"], s["seq_len"]) for s in ppl["series"]] == [
        ("sequence", 16), ("last-token", 16), ("last-token", 8)
    ]  # fmt: skip
    # every step writes a result like any command: kind, provenance (model, data, seed), run block
    for name, kind in (("ppl_vs_dispersion", "ppl-vs-dispersion"), ("layers", "layers"),
                       ("knn_keys", "knn-keys")):  # fmt: skip
        doc = json.loads((cell / f"{name}.json").read_text())
        assert doc["kind"] == kind and "date" in doc["run"]
        prov = doc["provenance"]
        assert prov["models"][0]["identity"] and prov["data"][0]["fingerprint"]
        assert prov["seed"] == 0
    mc_cell = next(out.glob("*/arc-challenge"))
    for name in ("probe", "hard_slices"):
        assert "provenance" in json.loads((mc_cell / f"{name}.json").read_text())
    # the figure tells the series apart: the sequence series and the last-token series of the
    # same data and length get different colours
    from repdisp import load_result

    fig = load_result(cell / "ppl_vs_dispersion.json").figure()
    points = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "None"]
    assert len(points) == 3 and len({ln.get_color() for ln in points}) == 3
    assert "last token's for the 'ctx' series" in fig.axes[0].get_xlabel()
    layers = json.loads((cell / "layers.json").read_text())
    assert [x["site"] for x in layers["layers"]] == ["0.ffn", "1.ffn", "final"]
    # the sequence series and the layer-wise final site come from the same extraction
    assert layers["layers"][-1]["bins"] == ppl["series"][0]["bins"]

    doc = json.loads((out / "claims.json").read_text())
    assert doc["missing"] == []
    rows = doc["claims"]
    kinds = [r["claim"][:6] for r in rows]
    assert kinds.count("§2.2(1") == 4 and kinds.count("§2.2(2") == 1
    assert kinds.count("§3.3 T") == 1 and kinds.count("§3.1 m") + kinds.count("§3.1 h") >= 1
    allowed = ("supported", "contradicted", "inconclusive")
    assert all(r["verdict"].startswith(allowed) for r in rows)
    # the sequence-level across row follows the rule applied to the slope's CI
    slope = ppl["series"][0]["stats"]["across"]["slope"]
    assert rows[0]["verdict"] == verdict(slope["ci_low"], slope["ci_high"], -1)
    assert f"{slope['value']:+.4f}" in rows[0]["result"]
    # an undecided slope row says at what N its CI would exclude 0 if the slope held
    for r in rows:
        if r["claim"].startswith("§2.2(1)"):
            decided = not r["verdict"].startswith("inconclusive")
            assert (r["n_to_decide"] is None) == decided
    v = slope["value"]
    h = v - slope["ci_low"] if v > 0 else slope["ci_high"] - v  # the CI's reach toward 0
    assert rows[0]["verdict"].startswith("inconclusive")  # a random tiny model, 60 segments
    expected = int(np.ceil(ppl["series"][0]["n_segments"] * (h / abs(v)) ** 2))
    assert rows[0]["n_to_decide"] == expected >= ppl["series"][0]["n_segments"]
    assert f"N ≈ {expected:,} would decide" in rows[0]["result"]
    md = (out / "findings.md").read_text()
    assert "Verdict rule" in md and "| claim | scope | paper | result | verdict |" in md
    claims_table = md.split("## Claims", 1)[1].split("\n## ", 1)[0]
    assert claims_table.count("\n| ") == len(rows) + 1
    assert "| step | seconds | floor s | ratio |" in md  # the timing table, apart from the claims
    # a floor for every step that ran a pass (the cell's extraction, the MC prompts), none for
    # the steps that only compute statistics
    floors = json.loads((out / "floor_seconds.json").read_text())
    ran = {k for k, v in floors.items() if v > 0}
    part, mc_part = cell.relative_to(out).as_posix(), mc_cell.relative_to(out).as_posix()
    assert ran == {f"{part}/ppl_vs_dispersion", f"{mc_part}/queries"}
    # Benjamini-Hochberg over the rows with a p-value, against its definition by brute force:
    # q_(i) = min over j >= i of p_(j) * m / j, with p sorted ascending
    with_p = [r for r in rows if r.get("p") is not None]
    p = np.array([r["p"] for r in with_p])
    m, order = len(p), np.argsort(p)
    q = np.empty(m)
    for rank, i in enumerate(order, 1):
        q[i] = min(1.0, min(p[order[j - 1]] * m / j for j in range(rank, m + 1)))
    assert m >= 5 and np.allclose([r["q_bh"] for r in with_p], q)
    assert f"{m} rows carry a p-value" in md and f"{int((q < 0.05).sum())} of them keep" in md
    # each row's command is listed once, with the rows it reproduces
    listed = re.findall(r"^- rows? ([0-9, -]+): `(.+)`$", md, flags=re.M)
    covered = {}
    for nums, cmd in listed:
        for part in nums.split(", "):
            a, _, b = part.partition("-")
            for i in range(int(a), int(b or a) + 1):
                covered[i] = cmd
    assert covered == {i: r["command"] for i, r in enumerate(rows, 1)}
    assert len(listed) == len({r["command"] for r in rows}) < len(rows)
    page = (out / "findings.html").read_text()
    assert "<table>" in page
    # every figure of the grid is linked, by a path relative to the page that exists
    figs = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert len(figs) == 3 and all((out / f).is_file() for f in figs)
    assert all(f"<img src='{f}'" in page for f in figs)

    # second run: every step is skipped, nothing goes through the model
    import repdisp.core.extract as extract_mod

    def no_forward(*a, **k):
        raise AssertionError("a finished step ran a forward pass")

    monkeypatch.setattr(extract_mod, "_forward_batch", no_forward)
    capsys.readouterr()
    assert main(["reproduce", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "done, skipped" in capsys.readouterr().out
    assert json.loads((out / "claims.json").read_text())["claims"] == rows

    # a lost step (killed before its marker) is recomputed from the cached shards, unchanged
    for f in cell.glob("*layers*"):
        f.unlink()
    (cell / "ppl_vs_dispersion.json").unlink()
    assert main(["reproduce", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert (
        json.loads((cell / "layers.json").read_text())["layers"][0]["stats"]
        == (layers["layers"][0]["stats"])
    )
    assert json.loads((out / "claims.json").read_text())["claims"] == rows


def test_config_flags_override_the_file(tmp_path, monkeypatch):
    from repdisp.cli import build_parser
    from repdisp.commands.reproduce import config_from_args as load_config
    from repdisp.reproduce.config import segments as _segments

    monkeypatch.setenv("REPDISP_SHARED_DATA", str(tmp_path / "shared"))
    args = build_parser().parse_args(
        ["reproduce", "--scale", "gpu", "--out", "x", "--model", "a", "--model", "b",
         "--segments-for", "b=300", "--segments-for", "b@wiki=700", "--segments", "900",
         "--dtype", "float32", "--no-mc"]
    )  # fmt: skip
    cfg = load_config(args)
    assert cfg["models"] == ["a", "b"] and cfg["seq_len"] == 512 and cfg["mc"] == []
    wiki, cnn = cfg["data"][:2]
    assert (_segments(cfg, "a", wiki), _segments(cfg, "b", cnn)) == (900, 300)
    assert _segments(cfg, "b", wiki) == 700  # MODEL@STEM: the stem of wiki.test.raw is "wiki"

    assert cfg["data"][0] == f"{tmp_path}/shared/wikitext-2-raw/wiki.test.raw"
    assert cfg["dtype"] == "float32" and cfg["contexts"] == [16, 64, 128, 256]


def test_reproduce_bad_input_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("segmentz: 10\n")
    assert main(["reproduce", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key" in err[0] and "Traceback" not in err[0]


def test_a_registered_claim_gives_its_row_or_its_missing_entry(tmp_path, monkeypatch):
    # the extension point: one builder with @claim, reading one result file per cell
    from repdisp.reproduce import claims as registry
    from repdisp.reproduce.config import load_config

    monkeypatch.setattr(registry, "CLAIMS", [])  # only this test's builder

    @registry.claim(over="cell", reads=("toy.json",), missing="toy step", when="toy")
    def toy_rows(cfg, at, doc):
        return [{"claim": "toy", "scope": at.scope, "verdict": verdict(doc["lo"], doc["hi"], -1)}]

    cfg = load_config("cpu", overrides={"models": ["org/m"], "data": ["python-docs", "a/wiki.raw"]})
    cfg["toy"] = True
    (tmp_path / "m" / "python-docs").mkdir(parents=True)
    (tmp_path / "m" / "python-docs" / "toy.json").write_text('{"lo": -0.2, "hi": -0.1}')
    rows, missing = registry.claims(cfg, tmp_path)
    assert rows == [{"claim": "toy", "scope": "m · python-docs", "verdict": "supported"}]
    assert missing == ["m · wiki: toy step"]
    cfg["toy"] = None  # its config key off: neither a row nor a missing entry
    assert registry.claims(cfg, tmp_path) == ([], [])


def test_registries_keep_the_page_order():
    # rows and steps come out in registration order, which the package fixes by its imports
    from repdisp.reproduce.claims import CLAIMS
    from repdisp.reproduce.steps import STEPS

    assert [c.name for c in CLAIMS] == [
        "ppl_rows", "layer_rows", "knn_rows", "mc_rows", "gap_rows", "sublayer_rows",
        "emergence_rows", "knnlm_rows", "table2_rows", "fig6_rows", "gap_checkpoint_rows",
        "fig7_rows", "fig8_cloze_rows",
    ]  # fmt: skip
    assert [(s.name, s.over) for s in STEPS] == [
        ("ppl_step", "cell"), ("layers_step", "cell"), ("knn_step", "cell"),
        ("mc_step", "task"), ("gap_step", "model"), ("sublayer_step", "cell"),
        ("random_init_step", "cell"), ("knnlm_step", "cell"), ("pushaway", "grid"),
        ("finetune_shift", "grid"), ("gap_checkpoints", "grid"), ("scratch_clusters", "grid"),
        ("cloze_step", "model"),
    ]  # fmt: skip


def test_load_config_refuses_a_key_it_cannot_override():
    from repdisp.core.errors import RepdispError
    from repdisp.reproduce.config import load_config

    with pytest.raises(RepdispError, match="cannot override 'knn'"):
        load_config("cpu", overrides={"knn": None})
    with pytest.raises(RepdispError, match="scale must be one of"):
        load_config("tpu")


def test_the_grid_holds_one_model_at_a_time(tiny_gpt2_dir, tmp_path, monkeypatch):
    """Each model is loaded once, for all its cells, model steps and tasks together, and its
    memory is returned after its last step: when the second model loads, the first is gone."""
    import gc
    import shutil
    import weakref

    import repdisp.reproduce.grid as grid_mod
    from repdisp.reproduce.config import load_config

    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    second = tmp_path / "second-tiny"
    shutil.copytree(tiny_gpt2_dir, second)
    (tmp_path / "reference.txt").write_text("the of and to in is a if it be\n")
    cfg_file = tmp_path / "two.yaml"
    cfg_file.write_text(
        f"""
models: ["{tiny_gpt2_dir}", "{second}"]
data: [python-docs, python-code]
segments: 24
seq_len: 16
dtype: float32
device: cpu
batch_size: 12
bin_size: 3
bins: 4
curve_bins: 4
stats_reps: 10
permutations: 10
layer_stats_reps: 5
bootstrap: 10
contexts: [16]
knn: null
gap: {{domain: python, reference: "{tmp_path / 'reference.txt'}"}}
pushaway: null
mc: []
sublayers: null
random_init: null
knnlm: null
"""
    )
    events: list[str] = []
    alive: dict[str, weakref.ref] = {}
    real = grid_mod.loader

    def counting_loader(*a, **k):
        load = real(*a, **k)

        def wrapped(spec):
            gc.collect()
            events.append(f"load {spec} (others alive: {sorted(s for s, r in alive.items() if r())})")
            lm = load(spec)
            alive[spec] = weakref.ref(lm)
            return lm

        return wrapped

    monkeypatch.setattr(grid_mod, "loader", counting_loader)
    cfg = load_config("cpu", cfg_file)
    grid_mod.run(cfg, tmp_path / "run", progress=False)
    first = str(tiny_gpt2_dir)
    assert events == [f"load {first} (others alive: [])", f"load {second} (others alive: [])"]
    gc.collect()
    assert all(r() is None for r in alive.values())  # both released at the end
    steps = list(json.loads((tmp_path / "run" / "step_seconds.json").read_text()))
    firsts = [i for i, k in enumerate(steps) if k.startswith("tiny-gpt20/")]
    assert firsts == list(range(len(firsts))) and any(k.endswith("/gap") for k in steps[: len(firsts)])
