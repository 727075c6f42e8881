"""Shared fixtures for the repdisp tests.

tiny_tokenizer  session: a real byte-level BPE tokenizer (transformers PreTrainedTokenizerFast,
                vocab 512, EOS ``<|endoftext|>``, no BOS added) trained in ~1 s on CPython's
                pydoc topics, so no download is needed.
tiny_gpt2       session: ``repdisp.core.models.LoadedModel`` of a random-init 2-block GPT-2
                (d=32, 2 heads, fp32, CPU, eval mode, seed 0) with ``tiny_tokenizer``.
                Shared by all tests: do not modify its weights or config.
tiny_gpt2_dir   session: the same model and tokenizer saved as a safetensors folder, for
                ``load_model(folder)`` and ``repdisp ... --model FOLDER`` (CLI tests).
smollm2         session: the real bundled SmolLM2-135M (fp32, CPU), loaded once (~3 s);
                skipped when the bundled package is not installed. Mark tests using it ``slow``.
tiny_segments   session: ``make_segments(tiny_tokenizer, "python-docs", 6, 24, seed=0)``
                (6 segments x 24 tokens, no BOS); read-only.

Tests that write extraction shards should pass ``cache=tmp_path`` (or ``--no-cache`` on the
CLI): ``REPDISP_HOME`` also holds the converted bundled models, so do not point it elsewhere
for tests that load them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Real data (read-only, never copied here): ../shared/data beside the checkout, or $REPDISP_SHARED_DATA.
DATA = Path(
    os.environ.get("REPDISP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
TINY_VOCAB = 512


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs ``-n auto``) each worker gets an equal share of
    the cores for torch, so the workers do not oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([topics[k] for k in sorted(topics)][:50], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_tokenizer):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from repdisp.core.models import LoadedModel

    torch.manual_seed(0)
    eos = tiny_tokenizer.eos_token_id
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=256,
        vocab_size=len(tiny_tokenizer),
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = GPT2LMHeadModel(config).eval()
    return LoadedModel(
        model, tiny_tokenizer, "tiny-gpt2", "tiny-gpt2:seed0", torch.device("cpu"), torch.float32
    )


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tiny_gpt2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_gpt2.model.save_pretrained(folder, safe_serialization=True)
    tiny_gpt2.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2():
    from repdisp.core.models import BUNDLED, converted_dir, load_model

    if (
        BUNDLED["smollm2-135m"].gguf_path() is None
        and not (converted_dir("smollm2-135m") / "config.json").exists()
    ):
        pytest.skip(f"bundled smollm2-135m not installed ({BUNDLED['smollm2-135m'].install})")
    return load_model("smollm2-135m", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_segments(tiny_tokenizer):
    from repdisp.core.corpus import make_segments

    return make_segments(tiny_tokenizer, "python-docs", 6, 24, seed=0)


@pytest.fixture(autouse=True)
def _run_folders_in_tmp(tmp_path, monkeypatch):
    """Commands run without --out write a new repdisp-out/COMMAND-N: keep those in tmp."""
    monkeypatch.setenv("REPDISP_OUT", str(tmp_path / "repdisp-out"))
