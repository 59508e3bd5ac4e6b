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


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_batched_solve_equals_one_lasso_per_query(n_jobs):
    """The engine solves every query at alpha = 1 on y / alpha in shared multi-target fits; that is the
    same problem as each query's own Lasso at its own alpha (queries of very different scales); a
    constant query has no influence."""
    from sklearn.linear_model import Lasso

    design, _, Y = planted(n=300, K=90, d=6, k=5, Q=5, noise=0.05)
    Y = Y * np.array([[1e-3], [1.0], [50.0], [1.0], [1.0]])
    Y[3] = 0.7
    cfg = RecoveryConfig(lambda_ratio=0.2, tol=1e-10, max_iter=50000, n_jobs=n_jobs, per_shard=False)
    rec = recover(Y, design.membership, cfg)
    M = design.membership.astype(np.float64)
    for q in (0, 1, 2, 4):
        expect = Lasso(alpha=rec.alpha[q], tol=1e-10, max_iter=50000).fit(M, Y[q]).coef_
        got = rec.influence[q].toarray().ravel()
        assert np.abs(got - expect).max() <= 1e-5 * max(np.abs(expect).max(), 1e-12), q
    assert rec.alpha[3] < 1e-12 and rec.nnz[3] == 0 and rec.nnz[[0, 1, 2, 4]].min() > 0


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


def sharded(shards=4, n_s=120, K_s=40, d=6, k=4, Q=6, noise=0.02, seed=0):
    """A block-diagonal design (one block per shard) and responses whose banks differ by a constant per shard."""
    import scipy.sparse as sp

    designs = [draw_design(n_s, K_s, d, seed=seed + s) for s in range(shards)]
    M = sp.block_diag([dz.membership for dz in designs], format="csr")
    rng = np.random.default_rng(seed + 7)
    W = np.zeros((Q, shards * n_s))
    for q in range(Q):
        idx = rng.choice(shards * n_s, k * shards, replace=False)
        W[q, idx] = rng.choice([-1.0, 1.0], idx.size) * rng.uniform(1.0, 2.0, idx.size)
    offsets = np.repeat(rng.uniform(-3, 3, shards), K_s)  # each shard's bank shifts every response
    Y = np.asarray(M @ W.T).T + offsets + noise * rng.standard_normal((Q, M.shape[0]))
    return M, W, Y


def test_diagonal_blocks_finds_each_shard_of_a_block_design():
    from stride_assets.engine.recovery import diagonal_blocks

    M, _, _ = sharded(shards=3, n_s=50, K_s=12)
    assert diagonal_blocks(M) == [(slice(0, 12), slice(0, 50)), (slice(12, 24), slice(50, 100)),
                                  (slice(24, 36), slice(100, 150))]
    single = draw_design(80, 20, 4, seed=1).membership
    assert diagonal_blocks(single) == [(slice(0, 20), slice(0, 80))]


@pytest.mark.parametrize("solver", ["sklearn", "fista"])
def test_per_shard_solution_satisfies_the_joint_optimality_conditions(solver):
    # the per-shard solves are the joint Lasso with one intercept per shard: its KKT conditions hold with one
    # alpha over the whole design (|M^T r| / K <= alpha everywhere, = alpha with the coefficient's sign on the support)
    M, _, Y = sharded()
    cfg = RecoveryConfig(solver=solver, lambda_ratio=0.2, n_jobs=1, tol=1e-10, max_iter=20000)
    rec = recover(Y, M, cfg)
    W = rec.influence.toarray().astype(np.float64)
    K = M.shape[0]
    for q in range(Y.shape[0]):
        R = Y[q] - M @ W[q]
        for s in range(4):  # each shard's intercept is the mean of its residual
            R[s * 40:(s + 1) * 40] -= R[s * 40:(s + 1) * 40].mean()
        g = M.T @ R / K
        alpha = rec.alpha[q]
        support = W[q] != 0
        assert np.all(np.abs(g) <= alpha * (1 + 1e-3) + 1e-6)
        assert np.allclose(g[support], alpha * np.sign(W[q][support]), rtol=1e-2, atol=1e-5)


def test_per_shard_intercepts_keep_a_bank_offset_out_of_the_influence():
    # planted: each shard's bank shifts all its responses by a constant; a shared intercept explains that
    # offset with the shard's members, one intercept per shard does not
    M, W, Y = sharded(noise=0.05)
    split = recover(Y, M, RecoveryConfig(lambda_ratio=0.1, n_jobs=1)).influence.toarray()
    joint = recover(Y, M, RecoveryConfig(lambda_ratio=0.1, n_jobs=1, per_shard=False)).influence.toarray()
    corr = lambda A: np.mean([np.corrcoef(A[q], W[q])[0, 1] for q in range(W.shape[0])])
    print(f"correlation with the planted influence: per shard {corr(split):.3f}, joint {corr(joint):.3f}")
    assert corr(split) > 0.9
    assert corr(split) > corr(joint) + 0.05


def test_per_shard_auto_lambda_runs_on_a_sharded_design():
    M, W, Y = sharded(Q=3)
    rec = recover(Y, M, RecoveryConfig(lambda_ratio="auto", n_jobs=1))
    assert set(rec.ratio.tolist()) <= set(RecoveryConfig().lambda_grid)
    assert (rec.r2 > 0.5).all()
