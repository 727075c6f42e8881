"""repdisp reproduce: the paper's evaluation grid in one resumable run, and a findings page.

For each model x corpus: ONE extraction (``memo``: every block output, the last block's
attention sub-layer and the final site; last-token vectors, within-segment dispersion,
perplexities) gives ppl-vs-dispersion (``ppl``: sequence-level and last-token), the layer-wise
analysis (``layers``), the kNN key profile (``knn``, Table 1) and the per-chunk sub-layer link
(``sublayers``, Fig. 31); a second pass of the same architecture at random init (``emergence``,
§2.2(2) end); a kNN-LM datastore + evaluation per candidate key (``knnlm_ppl``, §3.3); per model
the dispersion gap of its output embeddings (``gap``); per model x multiple-choice task the
accuracy probe and hard slices (``mc``); per model the same probe on next-word cloze (``cloze``,
Fig. 8 where the bundled models are above chance). ``--only ID[,ID]`` (``cfg["only"]``) runs the steps of
those claim rows only. Then ``findings.md``/``findings.html`` (``page``) with a claims table whose
verdicts follow one stated rule (``verdict.VERDICT_RULE``).

Files: ``config`` (scales, YAML loading, names and N per cell), ``steps`` (step registry, run
context, resume markers), ``memo`` (the cell's extraction), ``claims`` (claim registry, row
helpers), one module per family of steps and claims (``ppl``, ``layers``, ``knn``, ``mc``,
``gap``, ``sublayers``, ``emergence``, ``knnlm_ppl``, ``pushaway``, ``finetune_shift``,
``gap_checkpoints``, ``scratch_clusters``, ``cloze``), ``verdict`` (the rule), ``page`` (the
findings page), ``grid`` (the driver).

Resume: extractions go through the shard cache (a killed run restarts from its finished shards;
a second model adds only its own work); each step writes its files and then a ``.done.json``
marker with the step's parameters, and a step whose marker matches is skipped on rerun.

The package re-exports its entry points (``load_config``, ``run``, ``findings``); ``claims`` and
``verdict`` are modules here (their functions: ``claims.claims``, ``verdict.verdict``).

Usage: ``grid.run(config.load_config("cpu", "configs/reproduce_cpu.yaml"), "grid")``.
"""

from __future__ import annotations

# The family modules register their steps and claims on import: this order is the order of the
# steps in a cell and of the rows on the page. A new family module goes at the end of this list.
# isort: off
from . import ppl  # noqa: F401
from . import layers  # noqa: F401
from . import knn  # noqa: F401
from . import mc  # noqa: F401
from . import gap  # noqa: F401
from . import sublayers  # noqa: F401
from . import emergence  # noqa: F401
from . import knnlm_ppl  # noqa: F401
from . import pushaway  # noqa: F401
from . import finetune_shift  # noqa: F401
from . import gap_checkpoints  # noqa: F401
from . import scratch_clusters  # noqa: F401
from . import cloze  # noqa: F401

# isort: on
from .config import SCALES, load_config, segments
from .grid import run
from .mc import auroc
from .page import findings
from .steps import Steps
from .verdict import VERDICT_RULE

__all__ = [
    "SCALES",
    "VERDICT_RULE",
    "Steps",
    "auroc",
    "findings",
    "load_config",
    "run",
    "segments",
]
