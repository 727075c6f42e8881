"""Table-driven bad-input matrix: every case runs ``repdisp.cli.main([...])`` in-process.

A bad input must give exit 2 and exactly one ``repdisp...: error: ...`` line on stderr (argparse
may print its usage block before it) containing every keyword of the case, never a traceback,
and must leave finished work alone: a folder ``keep/`` of an earlier cache, datastore and result
files is hashed before and after every case. An unusual but valid input (BOM, CRLF, long CSV cell,
a folder with unknown files, a corrupt shard record) must give exit 0 and the same numbers as the
plain input (``same``), with at most one ``repdisp: warning`` line.

Placeholders in the arguments: ``{d}`` the folder of bad files, ``{m}`` a tiny GPT-2 folder
(context 256), ``{o}`` a fresh output folder of the case. Cases in another area of the code than
data/CLI errors are marked ``xfail(strict=False)`` with the area named, so they can be flipped.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_HF_LINE = "datasets" if importlib.util.find_spec("datasets") is None else "unreachable"

WORDS = " ".join(f"word{i} alpha beta" for i in range(400))
SMALL = ["--segments", "4", "--seq-len", "16", "--no-cache", "--quiet", "--bootstrap", "20"]
SMALL += ["--device", "cpu"]
MEASURE = ["measure", "--model", "{m}", *SMALL]
CACHED = ["measure", "--model", "{m}", "--segments", "4", "--seq-len", "16", "--quiet"]
CACHED += ["--bootstrap", "20", "--device", "cpu", "--data", "{d}/words.txt"]
PPL = ["ppl-vs-dispersion", "--model", "{m}", "--data", "{d}/words.txt", "--quiet"]
PPL += ["--segments", "8", "--seq-len", "16", "--bin-size", "2", "--bins", "3", "--no-cache"]
PPL += ["--bootstrap", "10", "--device", "cpu", "--out", "{o}"]
LAYERS = ["layers", "--model", "{m}", "--data", "{d}/words.txt", "--quiet", "--no-cache"]
LAYERS += ["--segments", "8", "--seq-len", "16", "--bin-size", "2", "--bins", "3"]
LAYERS += ["--bootstrap", "10", "--device", "cpu", "--out", "{o}"]
COMPARE = [
    "compare",
    "--model",
    "{m}",
    "--model",
    "{m}",
    "--data",
    "{d}/words.txt",
    "--quiet",
    "--no-cache",
]
COMPARE += ["--segments", "4", "--seq-len", "16", "--device", "cpu", "--out", "{o}"]
COMPARE += ["--bootstrap", "10"]
PROBE = ["accuracy-probe", "--model", "{m}", "--task", "jsonl", "--data", "{d}/mc.jsonl"]
PROBE += ["--quiet", "--device", "cpu", "--out", "{o}"]
HARD = ["hard-slices", "--model", "{m}", "--task", "jsonl", "--data", "{d}/mc.jsonl"]
HARD += ["--quiet", "--device", "cpu", "--out", "{o}"]
CLUSTERS = ["clusters", "--model", "{m}", "--data", "{d}/words.txt", "--quiet", "--no-cache"]
CLUSTERS += ["--ngram", "2", "--min-count", "3", "--per-cluster", "3", "--context", "8"]
CLUSTERS += ["--clusters", "3", "--bootstrap", "10", "--device", "cpu", "--out", "{o}"]
GAP = ["gap", "--model", "{m}", "--out", "{o}", "--reference", "{d}/reference.txt"]
KEYS = ["knn-keys", "--model", "{m}", "--data", "{d}/words.txt", "--quiet", "--no-cache"]
KEYS += ["--chunks", "2,3", "--seeds", "2", "--chunk-len", "16", "--device", "cpu"]
BUILD = ["knnlm", "build", "--model", "{m}", "--data", "{d}/words.txt", "--quiet"]
BUILD += ["--context", "32", "--stride", "16", "--device", "cpu", "--out", "{o}/ds"]
EVAL = ["knnlm", "eval", "--model", "{m}", "--datastore", "{d}/keep/ds", "--quiet"]
EVAL += ["--data", "{d}/words.txt@0:200", "--context", "32", "--stride", "16", "--k", "8"]
EVAL += ["--device", "cpu"]
SELECT = ["knnlm", "select", "--model", "{m}", "--train", "{d}/words.txt", "--quiet"]
SELECT += ["--eval", "{d}/words.txt@0:200", "--chunks", "2", "--seeds", "2", "--chunk-len", "16"]
SELECT += ["--context", "32", "--stride", "16", "--k", "8", "--device", "cpu", "--out", "{o}"]
FINETUNE = ["finetune", "--model", "{m}", "--data", "{d}/words.txt", "--quiet", "--steps", "1"]
FINETUNE += ["--seq-len", "16", "--batch-size", "2", "--device", "cpu", "--out", "{o}/ft"]
TRAIN = ["train", "--quiet", "--out", "{o}", "--config"]


@dataclass
class Case:
    id: str
    args: list[str]
    words: list[str] = field(default_factory=list)  # keywords on the error line
    code: int = 2
    same: str | None = None  # exit 0 and the same numbers as `measure --data {d}/<same>`
    ref: list[str] | None = None  # exit 0 and the same numbers as this command
    warning: bool = False  # exactly one `repdisp: warning` line expected
    area: str | None = None  # owned elsewhere: xfail(strict=False)


def C(id, args, *words, **kw) -> Case:  # noqa: N802 - short constructor for the table
    return Case(id, list(args), list(words), **kw)


def M(id, extra, *words, **kw) -> Case:  # noqa: N802 - a `measure` case
    return Case(id, [*MEASURE, *extra], list(words), **kw)


def D(id, name, *words, **kw) -> Case:  # noqa: N802 - a `measure --data {d}/<name>` case
    return Case(id, [*MEASURE, "--data", "{d}/" + name], [name, *words], **kw)


CASES: list[Case] = [
    # --- data: strict values, malformed files, unusual encodings -------------------------------
    D("jsonl-null", "null.jsonl", "line 2", "'text'", "null"),
    D("jsonl-number", "number.jsonl", "line 1", "'text'", "number"),
    D("jsonl-list", "list.jsonl", "line 1", "'text'", "list"),
    D("jsonl-bool", "bool.jsonl", "line 3", "'text'", "bool"),
    D("jsonl-object", "object.jsonl", "line 1", "'text'", "object"),
    D("jsonl-not-object-string", "string_line.jsonl", "line 2", "not a JSON object"),
    D("jsonl-not-object-array", "array_line.jsonl", "line 1", "not a JSON object"),
    D("jsonl-malformed", "malformed.jsonl", "line 2", "invalid JSON"),
    D("jsonl-trailing-garbage", "garbage.jsonl", "line 3", "invalid JSON"),
    D("jsonl-no-field", "nofield.jsonl", "line 2", "no field 'text'"),
    D("jsonl-gz-truncated", "truncated.jsonl.gz", "truncated"),
    D("jsonl-gz-not-gzip", "notgzip.jsonl.gz", "gzip"),
    D("jsonl-gz-null", "null.jsonl.gz", "line 2", "null"),
    D("jsonl-latin1", "latin1.jsonl", "UTF-8"),
    D("parquet-corrupt", "corrupt.parquet", "parquet"),
    D("parquet-truncated", "truncated.parquet", "parquet"),
    D("parquet-null", "null.parquet", "record 2", "null"),
    D("parquet-int", "int.parquet", "record 1", "'text'", "int"),
    D("parquet-list", "list.parquet", "record 1", "list"),
    D("parquet-no-column", "nocolumn.parquet", "no column 'text'"),
    D("csv-short-row", "short_row.csv", "line 3", "'text'"),
    D("csv-no-column", "nocolumn.csv", "no field 'text'"),
    D("csv-latin1", "latin1.csv", "UTF-8"),
    D("csv-empty", "empty.csv", "no text"),
    D("txt-empty", "empty.txt", "no text"),
    D("txt-short", "short.txt", "fewer than one segment"),
    D("txt-latin1", "latin1.txt", "UTF-8"),
    D("txt-binary", "binary.txt", "UTF-8"),
    D("unknown-file-type", "words.bin", "unsupported file type"),
    M("data-missing", ["--data", "{d}/missing.txt"], "missing.txt", "not found"),
    M("data-empty-string", ["--data", ""], "--data", "empty"),
    M("data-blank-string", ["--data", "  "], "--data"),
    M("data-empty-folder", ["--data", "{d}/empty_folder"], "empty_folder", "no"),
    M("data-only-unknown-files", ["--data", "{d}/only_unknown"], "only_unknown", "no"),
    M("data-folder-bad-file", ["--data", "{d}/folder_bad"], "bad.jsonl", "line 1"),
    M("data-text-field-missing", ["--data", "{d}/words.jsonl", "--text-field", "body"], "body"),
    M("data-text-field-empty", ["--data", "{d}/words.jsonl", "--text-field", ""], "field"),
    # without `datasets`: the install hint; with it (and no network here): the hub is unreachable
    M("hf-unavailable", ["--data", "hf:nonexistent/thing"], _HF_LINE),
    M("hf-empty-name", ["--data", "hf:"], "hf:"),
    # valid but unusual: the same numbers as the plain file
    D("txt-bom", "bom.txt", code=0, same="words.txt"),
    D("txt-crlf", "crlf.txt", code=0, same="words_lines.txt"),
    D("txt-cr", "cr.txt", code=0, same="words_lines.txt"),
    D("jsonl-bom", "bom.jsonl", code=0, same="words.jsonl"),
    D("jsonl-crlf", "crlf.jsonl", code=0, same="words.jsonl"),
    D("csv-bom", "bom.csv", code=0, same="words.csv"),
    D("csv-crlf-cells", "crlf_cells.csv", code=0, same="lines.csv"),
    D("csv-huge-cell", "huge.csv", code=0, same="huge.txt"),
    M(
        "folder-unknown-files-skipped",
        ["--data", "{d}/mixed"],
        code=0,
        same="words.txt",
        warning=True,
    ),
    # --- models ---------------------------------------------------------------------------------
    M("model-no-tokenizer", ["--model", "{d}/notokenizer"], "notokenizer", "tokenizer"),
    M("model-no-weights", ["--model", "{d}/noweights"], "no model weights"),
    M("model-no-config", ["--model", "{d}/empty_folder"], "config.json"),
    M("model-bad-config-json", ["--model", "{d}/badconfig"], "config.json"),
    M("model-unknown", ["--model", "no such model"], "unknown model"),
    M("model-empty-string", ["--model", ""], "--model"),
    M("model-txt-file", ["--model", "{d}/words.txt"], "not a .gguf"),
    M("model-not-gguf", ["--model", "{d}/notgguf.gguf"], "not a GGUF"),
    M("model-truncated-weights", ["--model", "{d}/truncated"], "cannot load model"),
    C("sites-model-missing", ["sites", "--model", "{d}/missing_model"], "missing_model"),
    C("prepare-unknown", ["models", "prepare", "nope"], "unknown bundled model"),
    C(
        "model-stale-weights",
        [*CACHED, "--model", "{d}/stale", "--cache-dir", "{d}/stale_cache"],
        code=0,
        ref=[*CACHED, "--model", "{d}/stale", "--no-cache"],
    ),
    # --- measure flags --------------------------------------------------------------------------
    M("segments-0", ["--segments", "0"], "--segments"),
    M("segments-neg", ["--segments", "-3"], "--segments"),
    M("segments-1", ["--segments", "1"], "--segments"),
    M("segments-text", ["--segments", "many"], "--segments"),
    M("segments-too-many", ["--segments", "100000"], "--segments"),
    M("seq-len-0", ["--seq-len", "0"], "--seq-len"),
    M("seq-len-1", ["--seq-len", "1"], "--seq-len"),
    M("seq-len-float", ["--seq-len", "1.5"], "--seq-len"),
    M("seq-len-too-long", ["--seq-len", "4096"], "context"),
    M("batch-size-0", ["--batch-size", "0"], "--batch-size"),
    M("batch-size-neg", ["--batch-size", "-2"], "--batch-size"),
    M("seed-neg", ["--seed", "-1"], "--seed"),
    M("seed-huge", ["--seed", str(2**70)], "--seed"),
    M("bootstrap-neg", ["--bootstrap", "-1"], "--bootstrap"),
    M("skip-first-neg", ["--skip-first", "-1"], "--skip-first"),
    M("skip-first-too-big", ["--skip-first", "15"], "--skip-first"),
    M("shard-segments-0", ["--shard-segments", "0"], "--shard-segments"),
    M("site-unknown-block", ["--site", "7.attn"], "7.attn"),
    M("site-garbage", ["--site", "banana"], "banana"),
    M("pooling-bad", ["--pooling", "max"], "--pooling"),
    M("dtype-bad", ["--dtype", "int8"], "--dtype"),
    M("device-bad", ["--device", "tpu"], "--device"),
    M("encoding-errors-bad", ["--encoding-errors", "ignore"], "--encoding-errors"),
    M(
        "out-parent-is-file",
        ["--data", "{d}/words.txt", "--out", "{d}/words.txt/r.json"],
        "words.txt",
    ),
    C("cache-dir-is-file", [*CACHED, "--cache-dir", "{d}/words.txt"], "words.txt"),
    C(
        "bad-flag-keeps-cache",
        [*CACHED, "--cache-dir", "{d}/keep/cache", "--segments", "0"],
        "--segments",
    ),
    C(
        "bad-site-keeps-cache",
        [*CACHED, "--cache-dir", "{d}/keep/cache", "--site", "9.ffn"],
        "9.ffn",
    ),
    C(
        "corrupt-shard-record-list",
        [*CACHED, "--cache-dir", "{d}/cache_list_record"],
        code=0,
        ref=[*CACHED, "--no-cache"],
    ),
    C(
        "corrupt-shard-record-number",
        [*CACHED, "--cache-dir", "{d}/cache_num_record"],
        code=0,
        ref=[*CACHED, "--no-cache"],
    ),
    C("unknown-command", ["frobnicate"], "frobnicate"),
    C("unknown-flag", ["measure", "--frobnicate"], "--frobnicate"),
    # --- ppl-vs-dispersion / layers / compare / merge / report -----------------------------------
    C("ppl-bin-size-0", [*PPL, "--bin-size", "0"], "--bin-size"),
    C("ppl-bins-0", [*PPL, "--bins", "0"], "--bins"),
    C("ppl-bins-neg", [*PPL, "--bins", "-2"], "--bins"),
    C("ppl-contexts-text", [*PPL, "--last-token", "--contexts", "a,b"], "--contexts"),
    C("ppl-contexts-0", [*PPL, "--last-token", "--contexts", "0,8"], "--contexts"),
    C("ppl-bootstrap-neg", [*PPL, "--bootstrap", "-5"], "--bootstrap"),
    C("ppl-seed-neg", [*PPL, "--seed", "-4"], "--seed"),
    C("ppl-data-null", [*PPL, "--data", "{d}/null.jsonl"], "null.jsonl", "null"),
    C("ppl-data-empty", [*PPL, "--data", ""], "--data"),
    C("layers-sites-bad", [*LAYERS, "--sites", "zzz"], "zzz"),
    C("layers-bins-0", [*LAYERS, "--bins", "0"], "--bins"),
    C("compare-segments-0", [*COMPARE, "--segments", "0"], "--segments"),
    C("compare-data-malformed", [*COMPARE, "--data", "{d}/malformed.jsonl"], "malformed.jsonl"),
    C("merge-missing", ["merge-ppl", "{d}/nope.json", "--out", "{o}"], "nope.json"),
    C("merge-not-json", ["merge-ppl", "{d}/words.txt", "--out", "{o}"], "words.txt"),
    C("merge-wrong-json", ["merge-ppl", "{d}/list.json", "--out", "{o}"], "list.json"),
    C("merge-latin1", ["merge-ppl", "{d}/latin1.json", "--out", "{o}"], "latin1.json"),
    C("report-missing", ["report", "{d}/no_such_folder"], "no_such_folder"),
    C(
        "report-non-utf8-csv",
        ["report", "{d}/report_latin1", "--out", "{o}"],
        code=0,
        warning=True,
    ),
    C(
        "report-non-utf8-json",
        ["report", "{d}/report_latin1_json", "--out", "{o}"],
        code=0,
        warning=True,
    ),
    C("report-bad-json", ["report", "{d}/report_badjson", "--out", "{o}"], code=0),
    # --- accuracy-probe / hard-slices -------------------------------------------------------------
    C("probe-levels-text", [*PROBE, "--levels", "x"], "--levels"),
    C("probe-levels-150", [*PROBE, "--levels", "0,150"], "--levels"),
    C("probe-sample-1", [*PROBE, "--sample", "1"], "--sample"),
    C("probe-seeds-0", [*PROBE, "--seeds", "0"], "--seeds"),
    C("probe-shots-neg", [*PROBE, "--shots", "-1"], "--shots"),
    C("probe-limit-0", [*PROBE, "--limit", "0"], "--limit"),
    C("probe-batch-0", [*PROBE, "--batch-size", "0"], "--batch-size"),
    C("probe-seed-neg", [*PROBE, "--seed", "-1"], "--seed"),
    C(
        "probe-data-missing",
        [*PROBE[:-5], "--data", "{d}/nope.jsonl", "--out", "{o}"],
        "nope.jsonl",
    ),
    C(
        "probe-scores-missing",
        ["accuracy-probe", "--scores", "{d}/nope.npz", "--out", "{o}"],
        "nope.npz",
    ),
    C(
        "probe-scores-corrupt",
        ["accuracy-probe", "--scores", "{d}/corrupt.npz", "--out", "{o}"],
        "corrupt.npz",
    ),
    C("probe-no-data", ["accuracy-probe", "--model", "{m}", "--out", "{o}"], "--data"),
    C("hard-fraction-0", [*HARD, "--fraction", "0"], "--fraction"),
    C("hard-fraction-big", [*HARD, "--fraction", "1.5"], "--fraction"),
    C("hard-fraction-text", [*HARD, "--fraction", "most"], "--fraction"),
    # --- clusters / gap / knn-keys ------------------------------------------------------------
    C("clusters-ngram-0", [*CLUSTERS, "--ngram", "0"], "--ngram"),
    C("clusters-min-count-0", [*CLUSTERS, "--min-count", "0"], "--min-count"),
    C("clusters-per-cluster-0", [*CLUSTERS, "--per-cluster", "0"], "--per-cluster"),
    C("clusters-context-0", [*CLUSTERS, "--context", "0"], "--context"),
    C("clusters-context-too-long", [*CLUSTERS, "--context", "5000"], "context"),
    C("clusters-clusters-0", [*CLUSTERS, "--clusters", "0"], "--clusters"),
    C("clusters-seed-neg", [*CLUSTERS, "--seed", "-2"], "--seed"),
    C("clusters-bootstrap-neg", [*CLUSTERS, "--bootstrap", "-1"], "--bootstrap"),
    C("clusters-data-null", [*CLUSTERS, "--data", "{d}/null.jsonl"], "null.jsonl"),
    C("gap-domain-missing", [*GAP, "--domain", "{d}/nope.txt"], "nope.txt"),
    C("gap-domain-empty", [*GAP, "--domain", "{d}/empty.txt"], "empty.txt"),
    C(
        "gap-reference-latin1",
        [*GAP, "--domain", "python", "--reference", "{d}/latin1.txt"],
        "latin1.txt",
    ),
    C("gap-accuracy-bad", [*GAP, "--domain", "python", "--accuracy", "x"], "--accuracy"),
    C(
        "gap-model-missing",
        ["gap", "--model", "{d}/nomodel", "--domain", "python", "--out", "{o}"],
        "nomodel",
    ),
    C("keys-chunks-text", [*KEYS, "--chunks", "a,b"], "--chunks"),
    C("keys-chunks-0", [*KEYS, "--chunks", "0,2"], "--chunks"),
    C("keys-seeds-0", [*KEYS, "--seeds", "0"], "--seeds"),
    C("keys-chunk-len-1", [*KEYS, "--chunk-len", "1"], "--chunk-len"),
    C("keys-batch-0", [*KEYS, "--batch-size", "0"], "--batch-size"),
    C("keys-data-empty", [*KEYS, "--data", ""], "--data"),
    # --- knnlm ----------------------------------------------------------------------------------
    C("build-context-0", [*BUILD, "--context", "0"], "--context"),
    C("build-context-too-long", [*BUILD, "--context", "1000"], "context"),
    C("build-stride-0", [*BUILD, "--stride", "0"], "--stride"),
    C("build-stride-over-context", [*BUILD, "--stride", "64"], "--stride"),
    C("build-shard-windows-0", [*BUILD, "--shard-windows", "0"], "--shard-windows"),
    C("build-batch-0", [*BUILD, "--batch-size", "0"], "--batch-size"),
    C("build-data-range-bad", [*BUILD, "--data", "{d}/words.txt@x:y"], "words.txt@x:y"),
    C("build-data-null", [*BUILD, "--data", "{d}/null.jsonl"], "null.jsonl"),
    C("build-site-bad", [*BUILD, "--site", "banana"], "banana"),
    C(
        "build-into-keep",
        [*BUILD[:-2], "--out", "{d}/keep/ds", "--context", "33"],
        "different datastore",
    ),
    C("eval-k-0", [*EVAL, "--k", "0"], "--k"),
    C("eval-k-neg", [*EVAL, "--k", "-5"], "--k"),
    C("eval-lmbda-big", [*EVAL, "--lmbda", "1.5"], "--lmbda"),
    C("eval-lmbda-neg", [*EVAL, "--lmbda", "-0.1"], "--lmbda"),
    C("eval-lmbda-nan", [*EVAL, "--lmbda", "nan"], "--lmbda"),
    C("eval-temperature-0", [*EVAL, "--temperature", "0"], "--temperature"),
    C("eval-lmbda-grid-text", [*EVAL, "--lmbda-grid", "a,b"], "--lmbda-grid"),
    C("eval-lmbda-grid-big", [*EVAL, "--lmbda-grid", "0,2"], "--lmbda-grid"),
    C("eval-temperature-grid-0", [*EVAL, "--temperature-grid", "0,1"], "--temperature-grid"),
    C("eval-nprobe-0", [*EVAL, "--nprobe", "0"], "--nprobe"),
    C("eval-context-too-long", [*EVAL, "--context", "1000"], "context"),
    C("eval-datastore-missing", [*EVAL, "--datastore", "{d}/nods"], "nods"),
    C(
        "eval-datastore-bad-manifest",
        [*EVAL, "--datastore", "{d}/ds_badmanifest"],
        "manifest",
    ),
    C(
        "eval-lmbda-1-strict-json",
        [*EVAL, "--lmbda", "1", "--data", "python-docs@0:300", "--out", "{o}"],
        code=0,
    ),
    C("select-chunks-0", [*SELECT, "--chunks", "0"], "--chunks"),
    C("select-seeds-0", [*SELECT, "--seeds", "0"], "--seeds"),
    C("select-k-0", [*SELECT, "--k", "0"], "--k"),
    # --- finetune / train / sweep ------------------------------------------------------------------
    C("ft-steps-0", [*FINETUNE, "--steps", "0"], "--steps"),
    C("ft-lr-neg", [*FINETUNE, "--lr", "-1"], "--lr"),
    C("ft-batch-0", [*FINETUNE, "--batch-size", "0"], "--batch-size"),
    C("ft-seq-len-1", [*FINETUNE, "--seq-len", "1"], "--seq-len"),
    C("ft-seed-neg", [*FINETUNE, "--seed", "-1"], "--seed"),
    C("ft-train-fraction-big", [*FINETUNE, "--train-fraction", "1.5"], "--train-fraction"),
    C("ft-train-fraction-0", [*FINETUNE, "--train-fraction", "0"], "--train-fraction"),
    C("ft-lora-r-0", [*FINETUNE, "--lora-r", "0"], "--lora-r"),
    C("ft-lora-dropout-big", [*FINETUNE, "--lora-dropout", "1.5"], "--lora-dropout"),
    C("ft-grad-accum-0", [*FINETUNE, "--grad-accum", "0"], "--grad-accum"),
    C("ft-warmup-neg", [*FINETUNE, "--warmup-steps", "-1"], "--warmup-steps"),
    C("ft-data-null", [*FINETUNE, "--data", "{d}/null.jsonl"], "null.jsonl"),
    C("ft-data-empty", [*FINETUNE, "--data", ""], "--data"),
    C("ft-config-missing", [*FINETUNE, "--config", "{d}/nope.yaml"], "nope.yaml"),
    C(
        "ft-config-malformed",
        [*FINETUNE, "--config", "{d}/malformed.yaml"],
        "malformed.yaml",
    ),
    C(
        "ft-config-list",
        [*FINETUNE, "--config", "{d}/list.yaml"],
        "list.yaml",
    ),
    C(
        "ft-config-bad-type",
        [*FINETUNE, "--config", "{d}/badtype.yaml"],
        "badtype.yaml",
    ),
    C("train-config-missing", [*TRAIN, "{d}/nope.yaml"], "nope.yaml"),
    C(
        "train-config-malformed",
        [*TRAIN, "{d}/malformed.yaml"],
        "malformed.yaml",
    ),
    C(
        "train-config-latin1",
        [*TRAIN, "{d}/latin1.yaml"],
        "latin1.yaml",
    ),
    C("train-max-steps-0", [*TRAIN, "{d}/train.yaml", "--max-steps", "0"], "--max-steps"),
    C("train-seed-neg", [*TRAIN, "{d}/train.yaml", "--seed", "-1"], "--seed"),
    C("train-lr-neg", [*TRAIN, "{d}/train.yaml", "--lr", "-1"], "--lr"),
    C("train-aux-weight-neg", [*TRAIN, "{d}/train.yaml", "--aux-weight", "-1"], "--aux-weight"),
    C("sweep-config-missing", ["sweep", "--config", "{d}/nope.yaml"], "nope.yaml"),
]


def _tiny_model(folder: Path) -> None:
    """The tests' tiny GPT-2 (2 blocks, d=32, context 256) with a byte-level BPE tokenizer."""
    from pydoc_data.topics import topics

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([topics[k] for k in sorted(topics)][:50], trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=256,
        vocab_size=len(tok),
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(config).eval().save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def _jsonl(values: list) -> str:
    return "".join(json.dumps({"text": v}) + "\n" for v in values)


def make_files(d: Path, m: Path, run) -> None:
    """Every bad or unusual input of the table, in ``d``; ``run(args)`` runs the CLI (setup of
    the earlier results kept in ``d/keep``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    w = WORDS
    half = [w[: len(w) // 2], w[len(w) // 2 :]]
    files: dict[str, str | bytes] = {
        "words.txt": w,
        "reference.txt": "the\nis\nin\nof\nand\nto\na\nfor\non\nwith\nas\nby\nbe\nan\nor\n",
        "words_lines.txt": "\n".join(half) + "\n",
        "bom.txt": "\ufeff" + w,
        "crlf.txt": "\r\n".join(half) + "\r\n",
        "cr.txt": "\r".join(half) + "\r",
        "short.txt": "only a few words",
        "empty.txt": "",
        "latin1.txt": w.encode() + b" caf\xe9 ",
        "binary.txt": bytes(range(256)) * 8,
        "words.bin": w,
        "words.jsonl": _jsonl(half),
        "bom.jsonl": "\ufeff" + _jsonl(half),
        "crlf.jsonl": _jsonl(half).replace("\n", "\r\n"),
        "null.jsonl": _jsonl([w, None]),
        "number.jsonl": _jsonl([12345, w]),
        "list.jsonl": _jsonl([["a", "b"], w]),
        "bool.jsonl": _jsonl([w, w, True]),
        "object.jsonl": _jsonl([{"a": 1}]),
        "string_line.jsonl": _jsonl([w]) + '"just a string"\n',
        "array_line.jsonl": "[1, 2]\n" + _jsonl([w]),
        "malformed.jsonl": _jsonl([w]) + '{"text": "unterminated\n',
        "garbage.jsonl": _jsonl([w, w]) + "not json at all\n",
        "nofield.jsonl": _jsonl([w]) + json.dumps({"body": w}) + "\n",
        "latin1.jsonl": _jsonl([w]).encode() + b'{"text": "caf\xe9"}\n',
        "words.csv": "id,text\n1," + half[0] + "\n2," + half[1] + "\n",
        "bom.csv": "\ufeffid,text\n1," + half[0] + "\n2," + half[1] + "\n",
        "lines.csv": 'id,text\n1,"' + half[0] + "\n" + half[1] + '"\n',
        "crlf_cells.csv": 'id,text\r\n1,"' + half[0] + "\r\n" + half[1] + '"\r\n',
        "short_row.csv": "id,text\n1," + w + "\n2\n",
        "nocolumn.csv": "id,body\n1," + w + "\n",
        "latin1.csv": b"id,text\n1,caf\xe9 " + w.encode() + b"\n",
        "empty.csv": "id,text\n",
        "huge.txt": (w + " ") * 60,
        "huge.csv": 'id,text\n1,"' + (w + " ") * 60 + '"\n',
        "corrupt.parquet": b"PAR1" + bytes(range(200)) + b"PAR1",
        "corrupt.npz": b"PK\x03\x04 this is not a zip file",
        "list.json": "[1, 2, 3]",
        "latin1.json": b'{"a": "caf\xe9"}',
        "mc.jsonl": "".join(
            json.dumps({"question": f"q{i} {w[:80]}", "choices": ["a", "b"], "answer": i % 2})
            + "\n"
            for i in range(8)
        ),
        "malformed.yaml": "options: {steps: [1, 2\n",
        "list.yaml": "- 1\n- 2\n",
        "badtype.yaml": "options:\n  steps: many\n",
        "latin1.yaml": b"name: caf\xe9\n",
        "train.yaml": "name: tiny\ndomains:\n  - {name: words, train: words.txt, "
        "val_fraction: 0.1, test_fraction: 0.1}\nmodel: {n_layer: 1, n_embd: 16, n_head: 2}\n"
        "vocab_size: 300\nblock_size: 16\nbatch_size: 2\nmax_steps: 1\neval_steps: [1]\n"
        "eval_blocks: 2\n",
    }
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    with gzip.open(d / "null.jsonl.gz", "wb") as f:
        f.write(_jsonl([w, None]).encode())
    blob = gzip.compress(_jsonl([w] * 20).encode())
    (d / "truncated.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    (d / "notgzip.jsonl.gz").write_text(_jsonl([w]))
    pq.write_table(pa.table({"text": [w, None]}), d / "null.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), d / "int.parquet")
    pq.write_table(pa.table({"text": [["a"], ["b"]]}), d / "list.parquet")
    pq.write_table(pa.table({"body": [w]}), d / "nocolumn.parquet")
    pq.write_table(pa.table({"text": [w] * 50}), d / "good.parquet")
    raw = (d / "good.parquet").read_bytes()
    (d / "truncated.parquet").write_bytes(raw[: len(raw) // 2])
    for sub in (
        "empty_folder",
        "only_unknown",
        "folder_bad",
        "mixed",
        "report_latin1",
        "report_latin1_json",
        "report_badjson",
    ):
        (d / sub).mkdir()
    (d / "only_unknown" / "a.bin").write_bytes(b"\x00\x01")
    (d / "only_unknown" / "b.docx").write_bytes(b"PK")
    (d / "folder_bad" / "good.txt").write_text(w)
    (d / "folder_bad" / "bad.jsonl").write_text('{"text": 5}\n')
    (d / "mixed" / "words.txt").write_text(w)
    (d / "mixed" / "image.png").write_bytes(b"\x89PNG")
    (d / "mixed" / "notes.docx").write_bytes(b"PK")
    (d / "report_latin1" / "r.json").write_text('{"a": 1}')
    (d / "report_latin1" / "bad.csv").write_bytes(b"a,b\ncaf\xe9,1\n")
    (d / "report_latin1_json" / "r.json").write_text('{"a": 1}')
    (d / "report_latin1_json" / "bad.json").write_bytes(b'{"a": "caf\xe9"}')
    (d / "report_badjson" / "r.json").write_text('{"a": 1')
    # models
    (d / "noweights").mkdir()
    shutil.copy(m / "config.json", d / "noweights")
    shutil.copytree(
        m, d / "notokenizer", ignore=shutil.ignore_patterns("*token*", "*vocab*", "merges*")
    )
    shutil.copytree(m, d / "badconfig")
    (d / "badconfig" / "config.json").write_text("{not json")
    shutil.copytree(m, d / "truncated")
    blob = (d / "truncated" / "model.safetensors").read_bytes()
    (d / "truncated" / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    (d / "notgguf.gguf").write_bytes(b"PK\x03\x04" + bytes(100))
    # earlier work that no failing run may touch
    keep = d / "keep"
    keep.mkdir()
    words = ["--data", str(d / "words.txt")]
    run(
        [
            "measure",
            "--model",
            str(m),
            *SMALL[:4],
            "--quiet",
            "--bootstrap",
            "20",
            "--device",
            "cpu",
            *words,
            "--cache-dir",
            str(keep / "cache"),
            "--out",
            str(keep / "measure"),
        ]
    )
    run(
        [
            "knnlm",
            "build",
            "--model",
            str(m),
            *words,
            "--quiet",
            "--context",
            "32",
            "--stride",
            "16",
            "--device",
            "cpu",
            "--out",
            str(keep / "ds"),
        ]
    )
    for name in ("cache_list_record", "cache_num_record"):
        shutil.copytree(keep / "cache", d / name)
    (d / "cache_list_record" / "shard_00000.json").write_text("[]")
    (d / "cache_num_record" / "shard_00000.json").write_text("7")
    shutil.copytree(keep / "ds", d / "ds_badmanifest")
    (d / "ds_badmanifest" / "manifest.json").write_text('{"complete": tr')
    # a model whose weights change in place after a first measured run
    shutil.copytree(m, d / "stale")
    run(
        [
            "measure",
            "--model",
            str(d / "stale"),
            *SMALL[:4],
            "--quiet",
            "--device",
            "cpu",
            "--bootstrap",
            "20",
            *words,
            "--cache-dir",
            str(d / "stale_cache"),
        ]
    )
    config = json.loads((d / "stale" / "config.json").read_text())
    config["layer_norm_epsilon"] = 0.5  # changes every hidden state, same weights
    (d / "stale" / "config.json").write_text(json.dumps(config))


def fill(args: list[str], d: Path, m: Path, o: Path) -> list[str]:
    return [a.format(d=d, m=m, o=o) for a in args]


def same_args(case: Case, d: Path, m: Path, o: Path, out: Path) -> tuple[list[str], list[str]]:
    """(the case's args, the reference args: the plain file's or ``case.ref``), both writing a
    measure JSON."""
    args = fill(case.args, d, m, o)
    if case.ref:
        ref = fill(case.ref, d, m, o)
    else:
        ref = list(args)
        i = ref.index("--data")
        ref[i + 1] = str(d / case.same)
    return [*args, "--out", str(out / "case")], [*ref, "--out", str(out / "ref")]


def numbers(folder: Path) -> dict:
    """The measure JSON in ``folder`` without what may differ (source name, time, run block)."""
    doc = json.loads((folder / "measure.json").read_text())
    return {k: v for k, v in doc.items() if k not in ("data", "seconds", "run", "provenance")}


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def _refuse(token: str):
    raise ValueError(f"non-finite number {token} in a result JSON")


def check(case: Case, rc: int, err: str) -> str | None:
    """None if the outcome is right, else what is wrong: traceback | silent | misleading | code."""
    if "Traceback" in err:
        return "traceback"
    if case.code == 0:
        if rc != 0:
            return f"code {rc}: {err.strip().splitlines()[-1:] if err.strip() else ''}"
        warn = [ln for ln in err.splitlines() if ln.startswith("repdisp: warning")]
        if case.warning and len(warn) != 1:
            return f"warnings: {warn}"
        return None
    if rc == 0:
        return "silent"
    if rc != case.code:
        return f"code {rc}"
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if re.match(r"repdisp[\w -]*: error: ", ln)]
    if len(errors) != 1:
        return f"not one error line: {lines[-3:]}"
    start = lines.index(errors[0])
    if start and not lines[0].startswith("usage:") or start != len(lines) - 1:
        return f"extra lines: {lines}"
    missing = [w for w in case.words if w.lower() not in errors[0].lower()]
    return f"misleading (no {missing}): {errors[0]}" if missing else None


# --- pytest ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_gpt2_dir):
    from repdisp.cli import main

    d = tmp_path_factory.mktemp("bad_matrix")

    def run(args):
        assert main(args) == 0

    make_files(d, tiny_gpt2_dir, run)
    return d


def _params():
    for c in CASES:
        marks = [pytest.mark.xfail(strict=False, reason=c.area)] if c.area else []
        yield pytest.param(c, id=c.id, marks=marks)


def test_matrix_is_big_enough():
    assert len(CASES) >= 100 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input(case, files, tiny_gpt2_dir, tmp_path, capsys, monkeypatch):
    from repdisp.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REPDISP_DEBUG", raising=False)
    d, m, o = files, tiny_gpt2_dir, tmp_path / "out"
    before = tree_hash(d / "keep")
    if case.same or case.ref:
        args, ref = same_args(case, d, m, o, tmp_path)
        assert main(ref) == 0, capsys.readouterr().err
        capsys.readouterr()
    else:
        args = fill(case.args, d, m, o)
    try:
        rc = main(args)
    except SystemExit as e:  # argparse
        rc = e.code
    captured = capsys.readouterr()
    problem = check(case, rc, captured.err)
    assert problem is None, f"{problem}\n{captured.err}"
    assert "Traceback" not in captured.out
    if case.same or case.ref:
        assert numbers(tmp_path / "case") == numbers(tmp_path / "ref")
    for path in tmp_path.rglob("*.json"):  # strict JSON: no NaN/Infinity tokens
        json.loads(path.read_text(), parse_constant=_refuse)
    assert tree_hash(d / "keep") == before  # earlier results and finished shards untouched


def test_keep_folder_is_real(files):
    """The protected folder holds finished shards, a datastore and a result (else the check above
    could not fail)."""
    keep = files / "keep"
    assert (
        list((keep / "cache").glob("shard_*.npz")) and (keep / "measure" / "measure.json").is_file()
    )
    assert (keep / "ds" / "manifest.json").is_file()


if __name__ == "__main__":  # pragma: no cover
    print(len(CASES), "cases;", os.environ.get("PYTHONPATH"))


BASES = {
    "ppl": PPL,
    "layers": LAYERS,
    "compare": COMPARE,
    "probe": PROBE,
    "hard": HARD,
    "clusters": CLUSTERS,
    "gap": [*GAP, "--domain", "python"],
    "keys": KEYS,
    "build": BUILD,
    "eval": EVAL,
    "select": SELECT,
    "finetune": FINETUNE,
    "train": [*TRAIN, "{d}/train.yaml"],
}


@pytest.mark.parametrize("name", list(BASES))
def test_base_commands_work(name, files, tiny_gpt2_dir, tmp_path, capsys, monkeypatch):
    """The command each case above changes one flag of runs cleanly as it is, so a refusal in the
    matrix is caused by the flag the case changed."""
    from repdisp.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(fill(BASES[name], files, tiny_gpt2_dir, tmp_path / "out")) == 0
    assert "error" not in capsys.readouterr().err
