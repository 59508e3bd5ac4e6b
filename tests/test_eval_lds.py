"""LDS on planted ground truth: an exact additive datamodel scores 1, noise scores ~0, NaNs are counted."""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from stride_assets.engine.evaluation.lds import lds, predicted_sums, seed_agreement
from stride_assets.engine.evaluation.task import draw_subsets


def planted(n=200, m=60, Q=8, seed=0):
    rng = np.random.default_rng(seed)
    subsets = draw_subsets(n, m, 0.5, seed)
    true = rng.standard_normal((Q, n))
    losses = 5.0 - subsets.astype(float) @ true.T  # training on helpful examples lowers the loss
    return subsets, true, losses, rng


def test_draw_subsets_sizes_and_seed():
    s = draw_subsets(101, 7, 0.3, seed=4)
    assert s.shape == (7, 101) and (s.sum(1) == 30).all()
    assert (s == draw_subsets(101, 7, 0.3, seed=4)).all()
    assert (s != draw_subsets(101, 7, 0.3, seed=5)).any()


def test_exact_datamodel_scores_one_and_the_sign_matters():
    subsets, true, losses, _ = planted()
    assert np.allclose(lds(true, subsets, losses).per_query, 1.0)
    assert np.allclose(lds(-true, subsets, losses).per_query, -1.0)


def test_noise_scores_near_zero_and_signal_degrades_gracefully():
    subsets, true, losses, rng = planted(Q=40)
    noise = lds(rng.standard_normal(true.shape), subsets, losses)
    assert abs(noise.mean) < 0.1
    partial = lds(true + 3 * rng.standard_normal(true.shape), subsets, losses)
    assert 0.1 < partial.mean < 0.9


def test_sparse_scores_match_dense():
    subsets, true, losses, _ = planted()
    true[np.abs(true) < 1.0] = 0.0
    assert np.allclose(lds(sp.csr_matrix(true), subsets, losses).per_query, lds(true, subsets, losses).per_query)
    assert np.allclose(predicted_sums(sp.csr_matrix(true), subsets), predicted_sums(true, subsets))


def test_undefined_queries_are_counted_not_dropped():
    subsets, true, losses, _ = planted(Q=5)
    true[2] = 0.0  # constant prediction
    losses[:, 4] = 1.0  # constant target
    result = lds(true, subsets, losses)
    assert result.n_nan == 2 and result.n_valid == 3
    assert result.as_dict()["n_queries"] == 5 and np.isclose(result.mean, 1.0)


def test_shapes_are_checked():
    subsets, true, losses, _ = planted()
    with pytest.raises(ValueError, match="scores"):
        lds(true[:, :-1], subsets, losses)
    with pytest.raises(ValueError, match="subsets"):
        lds(true, subsets[:-1], losses)


def test_seed_agreement():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 4))
    assert np.allclose(seed_agreement(a, a).per_query, 1.0)
    assert abs(seed_agreement(a, rng.standard_normal((30, 4))).mean) < 0.5


METER_PROBE = """
import time, numpy as np
from stride_assets.engine.evaluation.meter import metered, rss_mb
before = rss_mb()
with metered() as m:
    block = np.ones((128, 2**20), dtype=np.uint8)  # 128 MB, touched
    time.sleep(0.5)  # many polls while it is resident
    del block
print(m.seconds, m.peak_rss_mb - before)
"""


def test_meter_sees_memory_growth():
    # in a fresh process: after hundreds of tests, freed memory of this one can absorb the block
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", METER_PROBE], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    seconds, growth = float(out[0]), float(out[1])
    assert seconds > 0 and growth > 100
