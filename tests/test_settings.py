"""Settings objects: ``core.settings.Statistics`` and ``training.finetune_config.FinetuneConfig``
are validated once when built, the public entry points accept their fields as keywords (same
numbers as passing the object), and the CLI builds them before any model loads."""

from __future__ import annotations

import dataclasses

import pytest

from repdisp.cli import main
from repdisp.core.errors import RepdispError
from repdisp.core.sampling import Sampling
from repdisp.core.settings import Statistics
from repdisp.training.finetune_config import FinetuneConfig


@pytest.mark.parametrize(
    "kw, flag",
    [
        ({"bin_size": 1}, "--bin-size"),
        ({"n_bins": 1}, "--bins"),
        ({"bootstrap": -1}, "--bootstrap"),
        ({"stats_reps": -2}, "--stats-reps"),
        ({"permutations": -1}, "--permutations"),
        ({"curve_bins": 1}, "--curve-bins"),
        ({"seed": -1}, "--seed"),
        ({"seed": 2**32}, "--seed"),
        ({"level": 1.0}, "level"),
        ({"bin_size": 2.5}, "bin_size"),
    ],
)
def test_statistics_refuses_bad_values(kw, flag):
    with pytest.raises(RepdispError, match=flag):
        Statistics(**kw)


def test_statistics_is_frozen_and_keyword_only():
    s = Statistics(bin_size=4, seed=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.bin_size = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        Statistics(4, 3)  # type: ignore[misc]


def test_statistics_build_from_keywords():
    assert Statistics.build(None, 7, bin_size=4) == Statistics(bin_size=4, seed=7)
    base = Statistics(bin_size=4, n_bins=3, seed=1)
    assert Statistics.build(base, 9) is base  # an explicit object keeps its own seed
    assert Statistics.build(base, 9, n_bins=5) == Statistics(bin_size=4, n_bins=5, seed=1)
    with pytest.raises(TypeError, match="bins"):
        Statistics.build(None, 0, bins=4)
    with pytest.raises(RepdispError, match="--bins"):
        Statistics.build(base, 0, n_bins=1)


def test_keywords_and_statistics_object_give_the_same_result(tiny_gpt2):
    from repdisp.analyses.layers import layers
    from repdisp.analyses.ppl_dispersion import ppl_vs_dispersion

    samp = Sampling(segments=24, seq_len=12, seed=2, cache=False, progress=False)
    kw = dict(bin_size=4, n_bins=3, bootstrap=30, stats_reps=20, permutations=10, curve_bins=4)
    stats = Statistics(seed=2, **kw)
    a = ppl_vs_dispersion([tiny_gpt2], ["python-docs"], sampling=samp, **kw)
    b = ppl_vs_dispersion([tiny_gpt2], ["python-docs"], sampling=samp, stats=stats)
    assert _same(a.to_dict()["series"], b.to_dict()["series"])
    s = a.series[0]
    assert (s.bin_size, s.n_bins, s.seq_len, s.n_segments) == (4, 3, 12, 24)
    assert s.stats["across"]["reps"] == 20 and s.stats["across"]["perms"] == 10
    la = layers(tiny_gpt2, "python-docs", sites="embed,final", sampling=samp, **kw)
    lb = layers(tiny_gpt2, "python-docs", sites="embed,final", sampling=samp, stats=stats)
    assert _same(la.to_dict()["layers"], lb.to_dict()["layers"])
    assert (la.bin_size, la.n_bins, la.seq_len, la.seed) == (4, 3, 12, 2)
    # a different seed changes the resampling, so the seed really travels with the object
    c = ppl_vs_dispersion(
        [tiny_gpt2], ["python-docs"], sampling=samp, stats=dataclasses.replace(stats, seed=5)
    )
    assert c.series[0].bins == s.bins  # same segments, same bins
    assert c.series[0].stats["within"] != s.stats["within"]  # other bootstrap draws
    with pytest.raises(TypeError, match="bins"):
        ppl_vs_dispersion([tiny_gpt2], ["python-docs"], sampling=samp, bins=3)


def test_cli_refuses_bad_statistics_before_the_model_loads(capsys, tmp_path):
    missing = str(tmp_path / "no-such-model")
    assert main(["ppl-vs-dispersion", "--model", missing, "--bins", "1", "--no-cache"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--bins must be at least 2" in err and "no-such-model" not in err
    assert len(err.splitlines()) == 1


def test_finetune_config_validates_once():
    with pytest.raises(RepdispError, match="--method"):
        FinetuneConfig(method="qlora")
    with pytest.raises(RepdispError, match="--steps"):
        FinetuneConfig(steps=0)
    with pytest.raises(RepdispError, match="--save-every"):
        FinetuneConfig(save_every=-1)
    c = FinetuneConfig.build(None, steps=3, method="full")
    assert (c.steps, c.method, c.learning_rate) == (3, "full", 2e-4)
    assert FinetuneConfig.build(c, seed=4) == FinetuneConfig(steps=3, method="full", seed=4)
    with pytest.raises(TypeError, match="lr"):
        FinetuneConfig.build(None, lr=1e-3)
    # the resumable job's spec keeps the keys it had (checkpoints written before still resume)
    assert list(c.recipe()) == [
        "method", "steps", "learning_rate", "batch_size", "seq_len", "seed", "lora_r",
        "lora_alpha", "lora_dropout", "warmup_steps", "weight_decay", "grad_accum", "save_every",
    ]  # fmt: skip


def _same(a, b) -> bool:
    """Equal results, nan equal to nan (an across estimate's analytic p is nan by design)."""
    import json

    return json.dumps(a, sort_keys=True, default=repr) == json.dumps(
        b, sort_keys=True, default=repr
    )


def test_measure_command_and_keyword_call_agree(tiny_gpt2_dir, tmp_path, monkeypatch):
    """The command runs ``run_measure`` on objects built from the flags; the keyword
    ``repdisp.measure`` builds the same objects: the same numbers, and the command's result
    records the keyword call its flags amount to (which reruns to the same numbers)."""
    import json

    import repdisp
    from repdisp.core.models import load_model

    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))
    out = tmp_path / "m"
    args = ["measure", "--model", str(tiny_gpt2_dir), "--data", "python-docs", "--segments", "6"]
    args += ["--seq-len", "24", "--sites", "0.ffn,final", "--bootstrap", "40", "--no-cache"]
    assert main([*args, "--quiet", "--seed", "3", "--out", str(out)]) == 0
    written = json.loads((out / "measure.json").read_text())
    call = written["provenance"]["call"]
    assert call.startswith("repdisp.measure(model=<LoadedModel ")
    assert "segments=6, seq_len=24, pooling='last', seed=3" in call and "cache=False" in call
    lm = load_model(str(tiny_gpt2_dir), "cpu")
    r = repdisp.measure(lm, "python-docs", sites=["0.ffn", "final"], segments=6, seq_len=24,
                        seed=3, bootstrap=40, cache=False, progress=False)  # fmt: skip
    got = [[s["dispersion"], s["ci_low"], s["ci_high"]] for s in written["sites"]]
    assert got == [[s.dispersion, s.ci_low, s.ci_high] for s in r.sites]
    assert written["ppl"] == r.ppl and written["median_ppl"] == r.median_ppl
