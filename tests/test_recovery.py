"""Sparse recovery on planted signals: y = M w + noise with a known k-sparse w."""

import numpy as np
import pytest

from stride_assets.engine.config import RecoveryConfig
from stride_assets.engine.design import draw_design
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.recovery import alpha_max, recover


def planted(n, K, d, k, Q, noise, seed=0, offset=2.0):
    design = draw_design(n, K, d, seed=seed)
    rng = np.random.default_rng(seed + 100)
    W = np.zeros((Q, n))
    for q in range(Q):
        idx = rng.choice(n, k, replace=False)
        W[q, idx] = rng.choice([-1.0, 1.0], k) * rng.uniform(1.0, 2.0, k)
    Y = np.asarray(design.membership @ W.T).T + noise * rng.standard_normal((Q, K)) + offset
    return design, W, Y


def support_scores(W, W_hat, k):
    precision, recall = [], []
    for q in range(W.shape[0]):
        true = set(np.flatnonzero(W[q]))
        found = set(np.flatnonzero(W_hat[q]))
        top = set(np.argsort(-np.abs(W_hat[q]))[:k])
        precision.append(len(true & found) / max(1, len(found)))
        recall.append(len(true & top) / k)
    return float(np.mean(precision)), float(np.mean(recall))


@pytest.mark.parametrize("solver", ["sklearn", "fista"])
def test_planted_sparse_vector_is_recovered_at_k_much_less_than_n(solver):
    # K = 300 measurements for n = 3000 unknowns (10x under-determined), k = 10 non-zeros
    design, W, Y = planted(n=3000, K=300, d=10, k=10, Q=12, noise=0.05)
    rec = recover(Y, design.membership, RecoveryConfig(solver=solver, lambda_ratio=0.1, n_jobs=1))
    precision, recall = support_scores(W, rec.influence.toarray(), k=10)
    print(f"{solver}: support precision {precision:.3f}, top-k recall {recall:.3f}")
    assert precision >= 0.9
    assert recall >= 0.95
    signs_ok = np.sign(rec.influence.toarray()[W != 0]) == np.sign(W[W != 0])
    assert signs_ok.mean() > 0.95


def test_auto_lambda_recovers_and_picks_from_grid():
    design, W, Y = planted(n=1500, K=250, d=8, k=8, Q=6, noise=0.05)
    cfg = RecoveryConfig(lambda_ratio="auto", n_jobs=1)
    rec = recover(Y, design.membership, cfg)
    assert set(rec.ratio.tolist()) <= set(cfg.lambda_grid)
    precision, recall = support_scores(W, rec.influence.toarray(), k=8)
    assert recall >= 0.9 and precision >= 0.5


def test_sklearn_and_fista_agree():
    design, _, Y = planted(n=800, K=120, d=6, k=6, Q=4, noise=0.1)
    kw = dict(lambda_ratio=0.15, tol=1e-10, max_iter=50000, n_jobs=1)
    a = recover(Y, design.membership, RecoveryConfig(solver="sklearn", **kw)).influence.toarray()
    b = recover(Y, design.membership, RecoveryConfig(solver="fista", **kw)).influence.toarray()
    assert np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(a).max())


def test_alpha_max_gives_all_zero_solution():
    design, _, Y = planted(n=500, K=80, d=5, k=5, Q=3, noise=0.1)
    amax = alpha_max(design.membership, Y)
    assert (amax > 0).all()
    rec = recover(Y, design.membership, RecoveryConfig(lambda_ratio=0.999, n_jobs=1))
    # just below lambda_max only a handful of coefficients can enter
    assert rec.nnz.max() <= 3


def test_intercept_absorbs_a_common_offset():
    design, W, Y = planted(n=600, K=150, d=6, k=5, Q=3, noise=0.01, offset=50.0)
    rec = recover(Y, design.membership, RecoveryConfig(lambda_ratio=0.05, n_jobs=1))
    _, recall = support_scores(W, rec.influence.toarray(), k=5)
    assert recall >= 0.9


def test_bad_responses_are_rejected():
    design = draw_design(100, 20, 3, seed=0)
    with pytest.raises(StrideInputError, match="do not match"):
        recover(np.zeros((2, 19)), design.membership, RecoveryConfig())
    Y = np.zeros((2, 20))
    Y[0, 3] = np.nan
    with pytest.raises(StrideInputError, match="NaN"):
        recover(Y, design.membership, RecoveryConfig())
