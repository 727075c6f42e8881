"""The core and the §2 analysis on the real shared data with the real bundled models.

These read ../shared/data (or $REPDISP_SHARED_DATA) and skip with a reason when it is absent."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA
from scipy import stats

from repdisp.analyses.ppl_dispersion import Sampling, ppl_vs_dispersion
from repdisp.core.corpus import make_segments
from repdisp.core.extract import extract
from repdisp.core.models import load_model

WIKI = DATA / "wikitext-2-raw" / "wiki.test.raw"
CNN = DATA / "cnn_dailymail" / "frank_cnndm_test_250.jsonl"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not WIKI.exists(), reason=f"{WIKI} absent (shared data not mounted)"),
]


def test_gemma_bos_matters_on_wikitext():
    """Gemma-3 sees a BOS on every segment; without it perplexity is several times higher."""
    lm = load_model("gemma3-270m", "cpu", "float32")
    segs = make_segments(lm.tokenizer, str(WIKI), 6, 64, seed=1)
    assert segs.has_bos and (segs.ids[:, 0] == lm.tokenizer.bos_token_id).all()
    with_bos = extract(lm, segs, "final", "last", cache=False, progress=False).seq_ppl
    segs.ids = segs.ids[:, 1:]
    without = extract(lm, segs, "final", "last", cache=False, progress=False).seq_ppl
    assert 5 < np.exp(np.log(with_bos).mean()) < 120
    assert np.exp(np.log(without).mean()) > 3 * np.exp(np.log(with_bos).mean())


def test_ppl_vs_dispersion_on_cnn_dailymail(smollm2):
    """Algorithm 1 bins on real news text: equal-count bins, ordered perplexity, and
    correlations that agree with scipy on the bin means."""
    sampling = Sampling(segments=40, seq_len=64, batch_size=8, cache=False, progress=False)
    result = ppl_vs_dispersion(
        [smollm2], [str(CNN)], sampling=sampling, bin_size=8, n_bins=4, bootstrap=50
    )
    series = result.series[0]
    ppl = [b.mean_ppl for b in series.bins]
    assert len(series.bins) == 4 and all(b.n == 8 for b in series.bins)
    assert ppl == sorted(ppl) and 1 < ppl[0] < ppl[-1] < 1e4
    across = [b.across for b in series.bins]
    assert all(0 < a < 1.5 for a in across)
    r = series.correlations["across"]["pearson"].r
    assert r == pytest.approx(stats.pearsonr(ppl, across)[0], abs=1e-12)
