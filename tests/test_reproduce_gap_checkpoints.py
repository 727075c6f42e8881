"""§3.2 / Tables 3-4 row (``reproduce.gap_checkpoints``): checkpoints ranked by the gap G.

G is read from output-embedding rows only (checked against the loaded model's matrix with every
model loader made to raise); the exact permutation test is checked by hand at k = 4 and against
scipy; the row's verdict both ways on checkpoints with planted G orderings; the measured domain
perplexity against the model's own loss; config faults are one-line errors.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from repdisp.applications.gap.checkpoints import domain_perplexity, gap_of
from repdisp.applications.gap.ranktest import rank_verdict, spearman_exact
from repdisp.applications.gap.words import DOMAINS, REFERENCES, token_set
from repdisp.core.errors import RepdispError

EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok():
    """A byte-level BPE (EOS ``<|endoftext|>``) whose vocabulary holds most python keywords and
    everyday words as single tokens (trained on them and some prose)."""
    from pydoc_data.topics import topics

    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    words = " ".join(DOMAINS["python"][:60] + REFERENCES["everyday"][:80])
    texts = [words] * 30 + [topics[k] for k in sorted(topics)][:20]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=900, min_frequency=1, show_progress=False, special_tokens=[EOS]
    )
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS, bos_token=EOS)


@pytest.fixture(autouse=True)
def _home_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))


def _save(folder: Path, tokenizer, seed: int, tied: bool = True, pull: float = 0.0) -> Path:
    """A tiny GPT-2 checkpoint; ``pull`` mixes the python-token rows toward one direction
    (0: random rows; near 1: all alike), which lowers within(T) and so G."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        n_positions=64,
        vocab_size=len(tokenizer),
        tie_word_embeddings=tied,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(cfg)
    if pull:
        ids = torch.as_tensor(token_set(tokenizer, "python", DOMAINS["python"]).ids)
        w = model.get_output_embeddings().weight
        with torch.no_grad():
            w[ids] = (1 - pull) * w[ids] + pull * w[ids].mean(0, keepdim=True).sign() * 0.05
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def _brute_gap(rows_t: np.ndarray, rows_r: np.ndarray) -> float:
    """within(T) + between(T, T') by explicit float64 pair loops (cosine distance)."""
    cos = lambda a, b: 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))  # noqa: E731
    n = len(rows_t)
    within = np.mean([cos(rows_t[i], rows_t[j]) for i in range(n) for j in range(i + 1, n)])
    between = np.mean([cos(a, b) for a in rows_t for b in rows_r])
    return float(within + between)


@pytest.mark.parametrize("tied", [True, False])
def test_row_slice_gap_equals_loaded_model_gap(tok, tmp_path, monkeypatch, tied):
    import transformers

    folder = _save(tmp_path / "ck", tok, seed=3, tied=tied)

    def no_model(*a, **k):
        raise AssertionError("a model object was built")

    with monkeypatch.context() as m:  # no loader, no model class may run while G is read
        m.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(no_model))
        m.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
        m.setattr(transformers.GPT2LMHeadModel, "__init__", no_model)
        m.setattr("repdisp.core.loading.load_model", no_model)
        gap, key = gap_of(str(folder), "python", "everyday")
    assert gap.tensor == ("transformer.wte.weight" if tied else "lm_head.weight")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    w = model.get_output_embeddings().weight.detach().double().numpy()
    t = token_set(tok, "python", DOMAINS["python"]).ids
    r = token_set(tok, "everyday", REFERENCES["everyday"]).ids
    assert gap.n_domain == len(t) >= 5 and gap.n_reference == len(r) >= 5
    assert gap.cosine.gap == pytest.approx(_brute_gap(w[t], w[r]), abs=1e-6)
    assert len(key) == 64  # sha256 of tokenizer.json


def test_hub_id_reads_the_cached_snapshot(tok, tmp_path, monkeypatch):
    folder = _save(tmp_path / "ck", tok, seed=1)
    cache = tmp_path / "hub"
    snap = cache / "models--org--tiny" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    via_hub, _ = gap_of("org/tiny", "python", "everyday")
    local, _ = gap_of(str(folder), "python", "everyday")
    assert via_hub.cosine.gap == local.cosine.gap
    with pytest.raises(RepdispError, match="not in the local hub cache"):
        gap_of("org/absent", "python", "everyday")


def test_exact_permutation_p_by_hand_at_k4():
    # y swaps one adjacent pair: Σd² = 2, ρ = 1 − 6·2/(4·15) = 0.8. Of the 24 orderings, ρ >= 0.8
    # for the identity and the 3 adjacent swaps (Σd² <= 2), ρ <= −0.8 for their mirrors: p = 8/24.
    t = spearman_exact([1, 2, 3, 4], [1, 2, 4, 3])
    assert t["value"] == pytest.approx(0.8)
    assert t["p_value"] == pytest.approx(8 / 24) and t["p_paper"] == pytest.approx(4 / 24)
    assert t["orderings"] == 24 and t["p_floor"] == pytest.approx(2 / 24)
    perfect = spearman_exact([0.1, 0.5, 0.7, 2.0], [3, 5, 8, 9])
    assert perfect["value"] == pytest.approx(1.0) and perfect["p_value"] == pytest.approx(2 / 24)
    assert rank_verdict(perfect).startswith("inconclusive at this k (k = 4")


def test_exact_p_against_scipy_and_brute_force():
    from scipy import stats

    rng = np.random.default_rng(0)
    for k in (5, 6, 7):
        x, y = rng.normal(size=k), rng.normal(size=k)
        t = spearman_exact(list(x), list(y))
        assert t["value"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
        rho = [stats.spearmanr(x, np.array(p))[0] for p in itertools.permutations(y)]
        brute = np.mean(np.abs(rho) >= abs(t["value"]) - 1e-12)
        assert t["p_value"] == pytest.approx(brute, abs=1e-12) and t["orderings"] == math.factorial(
            k
        )
        assert t["null_low"] <= 0 <= t["null_high"]
    tied = spearman_exact([1, 1, 2, 3, 5], [2, 1, 1, 4, 4])
    assert tied["value"] == pytest.approx(stats.spearmanr([1, 1, 2, 3, 5], [2, 1, 1, 4, 4])[0])
    big = spearman_exact(list(range(10)), list(range(10)), draws=5000)
    assert "random orderings" in big["method"] and big["p_value"] == pytest.approx(1 / 5001)
    with pytest.raises(RepdispError):
        spearman_exact([1, 2], [1, 2])


def test_verdict_rule_both_ways():
    up = spearman_exact([1, 2, 3, 4, 5, 6], [10, 20, 25, 30, 50, 60])
    assert up["p_value"] == pytest.approx(2 / 720) and rank_verdict(up) == "supported"
    assert rank_verdict(up, direction=-1) == "contradicted"
    down = spearman_exact([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
    assert rank_verdict(down) == "contradicted"
    flat = spearman_exact([1, 2, 3, 4, 5, 6], [3, 6, 1, 5, 2, 4])
    assert rank_verdict(flat) == "inconclusive at this k"


# ---------------------------------------------------------------- the step and its row


def _config(tmp_path: Path, gap: dict) -> Path:
    path = tmp_path / "configs" / "c.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"models": ["m"], "data": ["python-docs"], "gap": gap}))
    return path


def _grid(tmp_path, gap):
    from repdisp.core.loading import load_model
    from repdisp.reproduce.config import load_config
    from repdisp.reproduce.steps import Run

    cfg = load_config("cpu", _config(tmp_path, gap))
    out = tmp_path / "out"
    return Run(cfg, out, lambda s: load_model(s, "cpu", "float32"), progress=False)


@pytest.mark.parametrize("sign", [1, -1])
def test_planted_ordering_gives_the_verdict_both_ways(tok, tmp_path, monkeypatch, sign):
    from repdisp.reproduce import gap_checkpoints as gc
    from repdisp.reproduce.claims import claims

    pulls = [0.0, 0.3, 0.6, 0.8, 0.95]  # G falls with the pull
    specs = [str(_save(tmp_path / f"c{i}", tok, 0, pull=p)) for i, p in enumerate(pulls)]
    # accuracy rising with G (sign +1: the paper's direction) or falling with it
    acc = [50 - sign * 10 * i for i in range(5)]
    entries = [
        {"model": s, "accuracy": a, "name": f"c{i}"}
        for i, (s, a) in enumerate(zip(specs, acc, strict=False))
    ]
    run = _grid(tmp_path, {"domain": "python", "reference": "everyday", "checkpoints": entries})
    gc.gap_checkpoints(run)
    doc = json.loads((run.out / "gap_checkpoints" / "gap_checkpoints.json").read_text())
    g = [r["cosine_gap"] for r in doc["checkpoints"]]
    assert all(a > b for a, b in zip(g, g[1:], strict=False))  # the planted ordering holds
    rows, _ = claims(run.cfg | {"only": ["gap-checkpoints"]}, run.out)
    (row,) = rows
    assert row["verdict"] == ("supported" if sign == 1 else "contradicted")
    assert row["result"].startswith(f"Spearman ρ(G, accuracy) = {sign:+.3f}")
    assert "exact two-sided p = 0.0167" in row["result"] and "k=5" in row["scope"]
    assert "--only gap-checkpoints" in row["command"]
    # rerun: the marker matches, so nothing is read again
    monkeypatch.setattr(gc, "measure", lambda *a: 1 / 0)
    gc.gap_checkpoints(run)


def test_measured_perplexity_matches_the_model_loss(tok, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from repdisp.core.corpus import token_stream
    from repdisp.core.loading import load_model
    from repdisp.reproduce import gap_checkpoints as gc

    text = tmp_path / "code.txt"
    text.write_text("def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i)\n" * 40)
    specs = [str(_save(tmp_path / f"c{i}", tok, i)) for i in range(3)]
    ppl = {"data": str(text), "seq_len": 16, "windows": 6, "batch_size": 4}
    gap = {"domain": "python", "checkpoints": [{"model": s} for s in specs], "perplexity": ppl}
    run = _grid(tmp_path, gap)
    gc.gap_checkpoints(run)
    doc = json.loads((run.out / "gap_checkpoints" / "gap_checkpoints.json").read_text())
    assert doc["accuracy_kind"] == "measured perplexity"
    ids = torch.as_tensor(token_stream(tok, [text.read_text()])[: 6 * 16].reshape(6, 16))
    for spec, r in zip(specs, doc["checkpoints"], strict=False):
        model = AutoModelForCausalLM.from_pretrained(spec).eval()
        with torch.no_grad():
            loss = float(model(input_ids=ids, labels=ids).loss)  # mean over 6·15 predictions
        assert r["ppl"] == pytest.approx(math.exp(loss), rel=1e-5) and r["ppl_tokens"] == 90
    m = domain_perplexity(load_model(specs[0], "cpu", "float32"), [text.read_text()], 16, 6)
    assert m["ppl"] == pytest.approx(doc["checkpoints"][0]["ppl"], rel=1e-9)
    (row,) = [gc.row_of(run.cfg, doc)]
    assert "ρ(G, −ppl)" in row["result"] and "lower ppl = better" in row["scope"]
    assert "inconclusive at this k (k = 3" in row["verdict"]


@pytest.mark.parametrize(
    ("gap", "match"),
    [
        ({"domain": "python", "colour": 1}, "unknown key"),
        (
            {"domain": "python", "checkpoints": [{"model": "./nowhere", "accuracy": 1}] * 3},
            "no such",
        ),
        ({"domain": "python", "checkpoints": [{"model": "a/b", "acc": 1}]}, "unknown key"),
        ({"domain": "python", "checkpoints": [{"model": "a/b", "accuracy": 1}]}, "at least 3"),
        (
            {
                "domain": "python",
                "checkpoints": [
                    {"model": "a/b", "accuracy": 1},
                    {"model": "a/c"},
                    {"model": "a/d", "accuracy": 2},
                ],
            },
            "for every checkpoint or for none",
        ),
        ({"domain": "python", "checkpoints": [{"model": f"a/{c}"} for c in "xyz"]}, "perplexity"),
        ({"domain": "python", "train": {"recipe": "./nope.yaml", "save_at": [1, 2, 3]}}, "recipe"),
    ],
)
def test_config_faults_are_one_line_errors(tmp_path, gap, match):
    from repdisp.reproduce.config import load_config

    with pytest.raises(RepdispError, match=match) as e:
        load_config("cpu", _config(tmp_path, gap))
    assert "\n" not in str(e.value)


def test_absent_perplexity_text_is_one_line_when_the_step_checks(tmp_path):
    from repdisp.reproduce.config import load_config
    from repdisp.reproduce.gap_checkpoints import check_block

    gap = {
        "domain": "python",
        "checkpoints": [{"model": f"a/{c}"} for c in "xyz"],
        "perplexity": {"data": "./absent.txt"},
    }
    cfg = load_config("cpu", _config(tmp_path, gap))  # loads
    with pytest.raises(RepdispError, match="no such file") as e:
        check_block(cfg["gap"])  # what the step runs first
    assert "\n" not in str(e.value)


def test_shipped_configs_load():
    from repdisp.reproduce.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    cpu = load_config("cpu", root / "reproduce_cpu.yaml")["gap"]
    assert len(cpu["train"]["save_at"]) >= 5 and cpu["perplexity"]["data"]
    gpu = load_config("gpu", root / "reproduce_gpu.yaml")["gap"]
    # no accuracies shipped (repdisp quotes none): each checkpoint's perplexity is measured
    assert len(gpu["checkpoints"]) >= 3 and not any("accuracy" in e for e in gpu["checkpoints"])
    assert gpu["perplexity"]["data"]


def _train_block(tmp_path: Path) -> dict:
    recipe = tmp_path / "configs" / "tiny_train.yaml"
    recipe.parent.mkdir(exist_ok=True)
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "tiny-code",
                "domains": [{"name": "code", "train": "python-code", "max_chars": 40000}],
                "model": {"n_layer": 1, "n_embd": 16, "n_head": 2},
                "vocab_size": 1000,
                "block_size": 16,
                "batch_size": 4,
                "lr": 3.0e-3,
                "warmup_steps": 2,
                "eval_blocks": 8,
                "log_steps": 2,
            }
        )
    )
    text = tmp_path / "heldout.txt"
    text.write_text("def add(a, b):\n    return a + b\n\nclass Point:\n    pass\n" * 30)
    words = tmp_path / "prose.txt"  # English words that the code's comments hold as one token
    words.write_text(
        "the value file name list object function default number string data "
        "first time line error type path module used called given new"
    )
    return {
        "domain": "python",
        "reference": str(words),
        "train": {
            "recipe": str(recipe),
            "save_at": [2, 4, 6, 8],
            "save_every": 4,
            "max_steps": 8,
            "eval_steps": [8],
        },
        "perplexity": {"data": str(text), "seq_len": 16, "windows": 4},
    }


def test_trained_checkpoints_resume_after_a_crash_equal_an_uninterrupted_run(tmp_path, monkeypatch):
    """The bundled kind of run: a GPT-2 from scratch saved at 4 steps. A run stopped at step 6
    (after the Trainer checkpoint of step 4; a kill leaves the same files) and run again gives
    the same checkpoints, G and perplexities as a run never stopped."""
    import repdisp.training.run as tr
    from repdisp.reproduce import gap_checkpoints as gc

    block = _train_block(tmp_path)
    whole = _grid(tmp_path / "a", block)
    gc.gap_checkpoints(whole)
    ref = json.loads((whole.out / "gap_checkpoints" / "gap_checkpoints.json").read_text())
    assert [r["name"] for r in ref["checkpoints"]] == ["step-2", "step-4", "step-6", "step-8"]
    assert all(
        r["ppl"] > 1 and r["tokenizer"] == ref["checkpoints"][0]["tokenizer"]
        for r in ref["checkpoints"]
    )
    row = gc.row_of(whole.cfg, ref)
    assert "steps 2, 4, 6, 8 of 8" in row["scope"] and "k=4" in row["scope"]

    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 6:
                raise KeyboardInterrupt

    original = tr.run_train

    def crashing(cfg, data=None, progress=False, options=None):
        from dataclasses import replace

        return original(
            cfg, data, progress, replace(options, callbacks=[*options.callbacks, Crash()])
        )

    cut = _grid(tmp_path / "b", block)
    monkeypatch.setattr(tr, "run_train", crashing)
    with pytest.raises(KeyboardInterrupt):
        gc.gap_checkpoints(cut)
    assert (cut.out / "gap_checkpoints" / "work" / "checkpoint-4").is_dir()
    assert not (cut.out / "gap_checkpoints" / "gap_checkpoints.json").exists()
    monkeypatch.setattr(tr, "run_train", original)
    gc.gap_checkpoints(cut)
    again = json.loads((cut.out / "gap_checkpoints" / "gap_checkpoints.json").read_text())
    for a, b in zip(ref["checkpoints"], again["checkpoints"], strict=True):
        assert a["cosine_gap"] == pytest.approx(b["cosine_gap"], abs=1e-12)
        assert a["ppl"] == pytest.approx(b["ppl"], rel=1e-12)
    assert again["spearman"] == ref["spearman"]
