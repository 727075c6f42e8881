"""The negative relation emerges with training (§2.2(2), end): the step and its claim.

Step ``layers_random_init`` (per cell, when ``cfg["random_init"]``): the model's architecture
with random weights - ``AutoModelForCausalLM.from_config(config)`` after
``torch.manual_seed(random_init.seed)``, the trained model's tokenizer, dtype and device - through
the same layer-wise analysis as the ``layers`` step (``analyses.layers.layers_from_extraction``
at every block output and the final site, last-token vectors, first token skipped, the same
Algorithm 1 settings, ``layer_stats_reps`` resamples and permutations) on the same segments as
the cell's main extraction (``memo``). One extra forward pass, of the random model; its shards
are cached under the random model's own identity (a hash of its parameters).

Claim (id ``emergence``): ``verdict.emergence_verdict`` of the two layer-wise verdicts
(``verdict.block_verdict`` over the second-half blocks, as the Fig. 5 row counts them): supported
when the trained model meets the rule and the random initialisation does not.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from .claims import Where, claim, command
from .config import label, stem
from .layers import NAME as TRAINED
from .layers import params as layer_params
from .layers import second_half
from .memo import layer_statistics, main_extraction, pass_floor, sampling
from .steps import Run, step, write_result
from .verdict import block_verdict, emergence_verdict

NAME = "layers_random_init"


def random_model(lm: Any, seed: int) -> Any:
    """``lm``'s architecture at a seeded random initialisation, as a ``LoadedModel``."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..core.models import as_loaded

    torch.manual_seed(seed)
    net = AutoModelForCausalLM.from_config(lm.model.config)
    net = net.to(device=lm.device, dtype=lm.dtype).eval()
    rnd = as_loaded((net, lm.tokenizer))
    return dataclasses.replace(rnd, name=f"{lm.name} (random init, seed {seed})")


@step(over="cell", when="random_init")
def random_init_step(run: Run, spec: str, data: str) -> None:
    from ..analyses.layers import layers_from_extraction

    cfg, folder = run.cfg, run.cell(spec, data)
    p = layer_params(cfg, spec, data) | {"random_init": cfg["random_init"]}
    if run.steps.done(folder, NAME, p):
        run.say(f"[{label(spec)} x {stem(data)}] layers at random init: done, skipped")
        return
    lm = run.model(spec)
    segs, _, _ = main_extraction(run, spec, data, lm)
    t = time.perf_counter()
    rnd = random_model(lm, cfg["random_init"]["seed"])
    ex = sampling(run, len(segs), cfg["seq_len"]).extract(
        rnd, segs, "all,final", ["last", "within"]
    )
    run.steps.floor += pass_floor(rnd, segs.ids, cfg["batch_size"], ex)  # a distinct model
    lres = layers_from_extraction(
        rnd.name, data, segs, ex, layer_statistics(cfg, len(segs)), pooling="last",
        skip_first=1,
    )  # fmt: skip
    lres.seconds = time.perf_counter() - t
    write_result(folder, NAME, lres, rnd, segs, cfg["seed"])
    run.steps.finish(folder, NAME, p)
    run.say(f"  layers at random init {lres.seconds:.0f} s")


@claim(
    over="cell",
    reads=(f"{TRAINED}.json", f"{NAME}.json"),
    missing="layers at random init",
    when="random_init",
    ids=("emergence",),
    steps=("layers_step", "random_init_step"),
)
def emergence_rows(
    cfg: dict[str, Any], at: Where, trained: dict[str, Any], rnd: dict[str, Any]
) -> list[dict[str, Any]]:
    """§2.2(2) end: the trained model meets the layer-wise rule, its random init does not."""
    _, (tn, tp, m), _ = second_half(trained)
    _, (rn, rp, rm), _ = second_half(rnd)
    tv, rv = block_verdict(tn, tp, m), block_verdict(rn, rp, rm)
    row = {
        "id": "emergence",
        "figure": "§2.2(2) random init",
        "claim": "§2.2(2) the negative relation emerges with training: absent in the same "
        "architecture before pretraining (seeded random init)",
        "scope": f"{at.scope}, N={trained['n_segments']}, {m} second-half blocks, init seed "
        f"{cfg['random_init']['seed']}",
        "paper": "trained: negative in the later layers; random init: not",
        "result": f"trained {tn}/{m} blocks CI<0, {tp} CI>0 ({tv}); random init {rn}/{rm} "
        f"CI<0, {rp} CI>0 ({rv})",
        "verdict": emergence_verdict(tv, rv),
        "command": command(cfg, at.spec, at.data, "--only emergence"),
    }
    return [row]
