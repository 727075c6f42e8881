"""Label-free applications: multiple-choice scoring, accuracy protocol, hard slices, gap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA

from repdisp.applications.accuracy_probe import accuracy_probe, run_protocol, sample_mix
from repdisp.applications.gap import EmbeddingRows, gap_components, parse_accuracy, token_set
from repdisp.applications.gap import rank_by_gap as gap
from repdisp.applications.hard_slices import auroc_wrong, hard_slices
from repdisp.applications.mcqa import (
    MCItem,
    MCResult,
    encode_pair,
    load_arc,
    load_generic,
    load_mmlu,
    make_prompts,
    score,
)
from repdisp.cli import main
from repdisp.core.errors import RepdispError
from repdisp.core.models import LoadedModel

TEXTS = [
    "Question: what is the capital of France? Answer: Paris is the capital.",
    "The following are multiple choice questions (with answers) about physics.",
    "A. red B. green C. blue D. yellow Answer: A B C D",
    "water boils at one hundred degrees; ice melts; the sun is a star",
] * 20


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    """Random-init GPT-2 (2 blocks, d=32) with a small byte-level BPE tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS, vocab_size=400, min_frequency=1, show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=tok.vocab_size, n_positions=256)
    model = GPT2LMHeadModel(cfg).eval()
    return LoadedModel(model, tok, "tiny", "tiny", torch.device("cpu"), torch.float32)


ITEMS = [
    MCItem("q1", "what is the capital of France?", ["Paris", "a blue star", "ice"], 0),
    MCItem("q2", "water boils at", ["one hundred degrees", "red"], 0, "physics"),
    MCItem("q3", "the sun is a", ["star", "green water boils", "yellow", "melts"], 2, "physics"),
]


def _hand_loglik(lm: LoadedModel, context: str, continuation: str) -> tuple[float, np.ndarray]:
    """Unpadded forward of context + continuation; sum of log p over continuation tokens."""
    ctx, cont = encode_pair(lm.tokenizer, context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        out = lm.model(ids, output_hidden_states=True)
    logp = torch.log_softmax(out.logits[0].double(), -1)
    total = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
    return total, out.hidden_states[-1][0, len(ctx) - 1].numpy()


@pytest.mark.parametrize("fmt", ["qa", "mmlu"])
def test_scoring_matches_hand_computation(tiny: LoadedModel, fmt: str) -> None:
    prompts = make_prompts(ITEMS, fmt)
    res = score(tiny, ITEMS, prompts, batch_size=3, progress=False)
    for qi, p in enumerate(prompts):
        hand = [_hand_loglik(tiny, p.context, c) for c in p.continuations]
        np.testing.assert_allclose(res.loglik[qi], [h[0] for h in hand], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(res.embeddings[qi], hand[0][1], rtol=1e-4, atol=1e-4)
        lens = np.array([len(t.encode()) for t in p.choice_texts])
        assert res.pred[qi] == np.argmax(res.loglik[qi])
        assert res.pred_norm[qi] == np.argmax(res.loglik[qi] / lens)
    assert res.acc == pytest.approx(np.mean(res.pred == [0, 0, 2]))


def test_prompt_formats_and_encode_pair(tiny: LoadedModel) -> None:
    qa = make_prompts(ITEMS[:1], "qa")[0]
    assert qa.context == "Question: what is the capital of France?\nAnswer:"
    assert qa.continuations == [" Paris", " a blue star", " ice"]
    mm = make_prompts(ITEMS[1:2], "mmlu", shots=1, shot_pool=ITEMS)[0]
    assert mm.context == (
        "The following are multiple choice questions (with answers) about physics.\n\n"
        "the sun is a\nA. star\nB. green water boils\nC. yellow\nD. melts\nAnswer: C\n\n"
        "water boils at\nA. one hundred degrees\nB. red\nAnswer:"
    )
    # Trailing context spaces move to the continuation, as in the harness.
    assert encode_pair(tiny.tokenizer, "Answer: ", "Paris") == encode_pair(
        tiny.tokenizer, "Answer:", " Paris"
    )


def test_result_roundtrip(tiny: LoadedModel, tmp_path: Path) -> None:
    res = score(tiny, ITEMS, make_prompts(ITEMS, "qa"), progress=False)
    back = MCResult.load(res.save(tmp_path / "q.npz"))
    assert back.items == res.items and back.model == "tiny"
    np.testing.assert_array_equal(back.embeddings, res.embeddings)
    for a, b in zip(back.loglik, res.loglik, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_prompt_longer_than_the_context_is_one_line(tiny: LoadedModel, monkeypatch) -> None:
    from repdisp.applications.mcqa.scoring import _pack

    prompts = make_prompts(ITEMS, "qa")
    need = max(  # by hand: context tokens + the longest choice's tokens after the first
        len(encode_pair(tiny.tokenizer, p.context, p.continuations[0])[0])
        + max(len(encode_pair(tiny.tokenizer, p.context, c)[1]) - 1 for c in p.continuations)
        for p in prompts
    )
    packed = [_pack(tiny.tokenizer, i, p, tiny.bos_id) for i, p in enumerate(prompts)]
    assert need == max(k.n_ctx + max(n for _, n in k.blocks) for k in packed)
    monkeypatch.setattr(type(tiny), "max_len", property(lambda self: need))
    fits = score(tiny, ITEMS, prompts, progress=False)  # exactly at the limit: scored
    assert all(np.isfinite(ll).all() for ll in fits.loglik)
    monkeypatch.setattr(type(tiny), "max_len", property(lambda self: need - 1))
    with pytest.raises(RepdispError, match=f"take {need} tokens, more than the model's context"):
        score(tiny, ITEMS, prompts, progress=False)


@pytest.mark.skipif(not (DATA / "arc").exists(), reason="../shared/data/arc absent")
def test_arc_loader_real_files() -> None:
    dev = load_arc(DATA / "arc" / "ARC-Challenge-Dev.jsonl")
    both = load_arc(DATA / "arc")
    assert len(dev) == 299 and len(both) == 299 + 1172
    assert dev[0].question.startswith("Juan and LaKeisha roll")
    assert dev[0].answer == 3 and dev[0].choices[3] == "Record the details of the investigation."
    assert all(0 <= it.answer < len(it.choices) for it in both)
    assert {len(it.choices) for it in both} <= {3, 4, 5}


@pytest.mark.skipif(not (DATA / "mmlu").exists(), reason="../shared/data/mmlu absent")
def test_mmlu_loader_real_files() -> None:
    val, dev = load_mmlu(DATA / "mmlu" / "val"), load_mmlu(DATA / "mmlu" / "dev")
    assert len(val) == 1531 and len(dev) == 285
    assert len({it.subject for it in val}) == 57
    first = val[0]
    assert first.subject == "abstract_algebra" and first.choices == ["4", "8", "12", "6"]
    assert first.answer == 0 and first.question.startswith("The cyclic subgroup of Z_24")
    p = make_prompts([first], "mmlu", shots=5, shot_pool=dev)[0]
    assert p.context.startswith(
        "The following are multiple choice questions (with answers) about abstract algebra."
    )
    assert p.context.count("\nAnswer:") == 6 and p.continuations == [" A", " B", " C", " D"]


def test_generic_loader(tmp_path: Path) -> None:
    f = tmp_path / "q.jsonl"
    f.write_text(
        '{"q": "2+2?", "opts": ["3", "4"], "gold": "B"}\n'
        '{"q": "sky?", "opts": [{"label": "x", "text": "blue"}, {"label": "y", "text": "red"}], "gold": "x"}\n'
    )
    items = load_generic(str(f), "q", "opts", "gold")
    assert [it.answer for it in items] == [1, 0] and items[1].choices == ["blue", "red"]
    with pytest.raises(RepdispError):
        load_generic(str(f), "question", "opts", "gold")


def test_sampling_exact_mix_and_deterministic() -> None:
    c_idx, i_idx = np.arange(0, 60), np.arange(60, 200)
    for level in (0.0, 0.3, 0.5, 1.0):
        a = sample_mix(c_idx, i_idx, level, 50, seed=4)
        assert len(a) == 50 == len(set(a.tolist()))
        assert (a < 60).sum() == round(level * 50)
        np.testing.assert_array_equal(a, sample_mix(c_idx, i_idx, level, 50, seed=4))
        assert not np.array_equal(np.sort(a), np.sort(sample_mix(c_idx, i_idx, level, 50, 5)))
    with pytest.raises(RepdispError):
        sample_mix(c_idx, i_idx, 1.0, 61, seed=0)


def test_protocol_reduce_and_skip() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 8))
    correct = np.arange(100) < 30
    lv, used, notes = run_protocol(x, correct, (0.0, 0.5, 1.0), sample=50, seeds=3)
    assert used == 30 and notes and [r.n_correct for r in lv] == [0, 15, 30]
    lv, used, notes = run_protocol(x, correct, (0.0, 0.5, 1.0), 50, 3, short="skip")
    assert used == 50 and [r.level for r in lv] == [0.0, 0.5]
    # Embeddings that cluster tightly when correct: dispersion falls with the fraction correct.
    x[correct] = x[0] + 0.01 * rng.normal(size=(30, 8))
    res = MCResult(
        [MCItem(str(i), "q", ["a", "b"], 0) for i in range(100)],
        [np.zeros(2)] * 100,
        np.where(correct, 0, 1),
        np.where(correct, 0, 1),
        x,
    )
    probe = accuracy_probe(
        res, model="m", task="t", levels=(0.0, 0.25, 0.5, 0.75, 1.0), sample=20, seeds=4
    )
    assert probe.spearman_means.r == pytest.approx(-1.0)
    assert probe.n_correct == 30 and probe.acc == pytest.approx(0.3)


def test_auroc_and_hard_slices() -> None:
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(1)
    scores, wrong = rng.normal(size=200), rng.random(200) < 0.4
    u = mannwhitneyu(-scores[wrong], -scores[~wrong]).statistic
    assert auroc_wrong(scores, wrong) == pytest.approx(u / (wrong.sum() * (~wrong).sum()))
    assert auroc_wrong(np.where(wrong, 0.0, 1.0), wrong) == 1.0
    # Wrong answers in a tight cluster have the lowest scores: the slice holds them, AUROC 1.
    x = rng.normal(size=(50, 64))
    x[:15] = 5.0 + 0.01 * rng.normal(size=(15, 64))
    res = MCResult(
        [MCItem(str(i), "q", ["a", "b"], 0) for i in range(50)],
        [np.zeros(2)] * 50,
        np.where(np.arange(50) < 15, 1, 0),
        np.zeros(50, dtype=int),
        x,
    )
    hs = hard_slices(res, fraction=0.3)
    assert hs.n_slice == 15 and set(hs.slice_idx.tolist()) == set(range(15))
    assert hs.auroc == 1.0 and hs.error_rate_slice == 1.0 and hs.error_rate_all == 0.3


def _brute(a: np.ndarray, b: np.ndarray, metric: str) -> float:
    if metric == "cosine":
        ua = a / np.linalg.norm(a, axis=1, keepdims=True)
        ub = b / np.linalg.norm(b, axis=1, keepdims=True)
        d = 1 - ua @ ub.T
    else:
        d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    return d


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_gap_components_brute_force(metric: str) -> None:
    rng = np.random.default_rng(2)
    t, r = rng.normal(size=(17, 9)), rng.normal(size=(23, 9)) + 0.5
    g = gap_components(t, r, metric)
    dt, dr, db = _brute(t, t, metric), _brute(r, r, metric), _brute(t, r, metric)
    within_t = dt[np.triu_indices(17, 1)].mean()
    assert g.within_domain == pytest.approx(within_t, rel=1e-10)
    assert g.within_reference == pytest.approx(dr[np.triu_indices(23, 1)].mean(), rel=1e-10)
    assert g.between == pytest.approx(db.mean(), rel=1e-10)
    assert g.gap == pytest.approx(within_t + db.mean(), rel=1e-10)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPDISP_HOME", str(tmp_path / "home"))


@pytest.mark.parametrize("tied", [True, False])
def test_lazy_read_matches_from_pretrained(
    tiny: LoadedModel, tmp_path: Path, tied: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=400, tie_word_embeddings=tied)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    held = AutoModelForCausalLM.from_pretrained(tmp_path).get_output_embeddings().weight.detach()
    src = EmbeddingRows(str(tmp_path))
    assert src.tied == tied and src.tensor == (
        "transformer.wte.weight" if tied else "lm_head.weight"
    )
    ids = np.array([0, 7, 399, 3])
    np.testing.assert_array_equal(src.rows(ids), held[ids].double().numpy())
    res = gap([str(tmp_path)], "python", reference="everyday")
    assert res.checkpoints[0].n_domain >= 2 and res.ranking == [str(tmp_path)]
    # The token sets are now cached: a second run needs no tokenizer and gives the same result.
    monkeypatch.setattr(EmbeddingRows, "tokenizer", lambda self: 1 / 0)
    again = gap([str(tmp_path)], "python", reference="everyday")
    assert again.checkpoints[0] == res.checkpoints[0]


def test_gguf_lazy_read_dequantizes_rows(tmp_path: Path) -> None:
    import gguf
    from gguf.quants import dequantize, quantize

    w = np.random.default_rng(3).normal(size=(50, 64)).astype(np.float32)
    q = quantize(w, gguf.GGMLQuantizationType.Q8_0)
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("token_embd.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    src = EmbeddingRows(str(path))
    full = dequantize(q, gguf.GGMLQuantizationType.Q8_0)
    ids = np.array([49, 0, 12])
    assert src.tied and src.kind == "gguf"
    np.testing.assert_array_equal(src.rows(ids), full[ids].astype(np.float64))
    assert np.abs(full - w).max() < 0.05


def test_token_set_skips_multi_token_words(tiny: LoadedModel) -> None:
    ts = token_set(tiny.tokenizer, "x", ["water", "boils", "zzqqxxyy", "water"])
    assert ts.words == ["water", "boils"] and ts.skipped == ["zzqqxxyy"]
    for w, i in zip(ts.words, ts.ids, strict=True):
        assert tiny.tokenizer.decode([int(i)]).strip() == w


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["gap", "--model", "/nonexistent", "--domain", "python"]) == 2
    assert main(["accuracy-probe", "--task", "mmlu", "--levels", "0,150"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("repdisp: error:") for e in err)
    with pytest.raises(RepdispError):
        parse_accuracy(["a=1,b"])


def test_gap_ranking_and_correlations(tiny: LoadedModel, tmp_path: Path) -> None:
    from scipy.stats import kendalltau, spearmanr
    from transformers import GPT2Config, GPT2LMHeadModel

    specs = []
    for k in range(4):
        torch.manual_seed(k)
        folder = tmp_path / f"m{k}"
        cfg = GPT2Config(
            n_layer=1, n_embd=16, n_head=2, vocab_size=400, initializer_range=0.02 * (k + 1)
        )
        GPT2LMHeadModel(cfg).save_pretrained(folder)
        tiny.tokenizer.save_pretrained(folder)
        specs.append(str(folder))
    acc = {s: a for s, a in zip(specs, [10.0, 30.0, 20.0, 40.0], strict=True)}
    res = gap(specs, "python", reference="everyday", metric="euclidean", accuracy=acc)
    g = [c.euclidean.gap for c in res.checkpoints]
    assert res.ranking == [specs[i] for i in np.argsort(g)[::-1]]
    assert res.spearman.r == pytest.approx(spearmanr(g, list(acc.values()))[0])
    assert res.kendall.r == pytest.approx(kendalltau(g, list(acc.values()))[0])
