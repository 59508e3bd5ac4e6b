"""Sparse recovery: per-query Lasso of the responses against the membership matrix.

    w(x) = argmin_w 1/(2K) ||y_x - b - M w||^2 + alpha ||w||_1      (intercept b, scikit-learn's scaling)

``alpha`` is set per query relative to ``alpha_max = ||M^T (y - mean y)||_inf / K``, the smallest
value at which the solution is all zeros, since query loss scales differ a lot. With
``lambda_ratio="auto"`` the ratio is chosen per query on held-out subsets. Two solvers:
scikit-learn's coordinate descent (all queries in a few multi-target fits, one per job) and a batched FISTA over all
queries at once on the sparse M; both solve the same problem. ``solver: ridge`` replaces the L1
penalty by an L2 one (dense influence, one shared solve), for when influence is not sparse.

A pipeline design is block diagonal: each shard's subsets hold only that shard's examples and each
shard has its own operator bank. With ``per_shard`` (the default) every block gets its own intercept
b_s, which takes up the bank-wide offset of that shard's responses instead of spreading it over the
shard's members, and the problem separates exactly into one Lasso per block:

    1/(2K) sum_s ||y_s - b_s - M_s w_s||^2 + alpha ||w||_1
      = sum_s K_s/K [ 1/(2K_s) ||y_s - b_s - M_s w_s||^2 + (alpha K/K_s) ||w_s||_1 ]

so block s is solved alone with alpha_s = alpha K / K_s; alpha_max is the largest block's
||M_s^T (y_s - mean y_s)||_inf / K. Each solve is one shard's size, so the cost is linear in the
number of shards instead of growing with the whole design. One block (the harness's single design)
is the joint problem itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, delayed, effective_n_jobs

from stride_assets.engine.config import RecoveryConfig
from stride_assets.engine.errors import StrideInputError


@dataclass
class Recovery:
    """Influence (Q x n, sparse) and per-query diagnostics."""

    influence: sp.csr_matrix
    ratio: np.ndarray  # lambda / lambda_max used per query
    alpha: np.ndarray  # lambda used per query
    r2: np.ndarray  # in-sample fit of y per query
    nnz: np.ndarray  # non-zeros per query


def alpha_max(M: sp.spmatrix, Y: np.ndarray, blocks: list[tuple[slice, slice]] | None = None) -> np.ndarray:
    """Per-query smallest alpha with an all-zero Lasso solution (intercept fitted; one per block if given)."""
    parts = blocks or [(slice(0, M.shape[0]), slice(0, M.shape[1]))]
    out = np.zeros(Y.shape[0])
    for rows, cols in parts:
        Yc = Y[:, rows] - Y[:, rows].mean(axis=1, keepdims=True)
        out = np.maximum(out, np.abs(np.asarray(M[rows, cols].T @ Yc.T)).max(axis=0))
    return out / M.shape[0]


def diagonal_blocks(M: sp.csr_matrix) -> list[tuple[slice, slice]]:
    """The (rows, columns) of each diagonal block of a block-diagonal design, in order.

    Rows i.. start a new block where every earlier row's members lie left of every later row's;
    columns in no subset between two blocks go to the earlier one. A design that is not block
    diagonal is one block.
    """
    M = M.tocsr()
    K, n = M.shape
    counts = np.diff(M.indptr)
    if K == 0 or (counts == 0).any():
        return [(slice(0, K), slice(0, n))]
    lo = np.minimum.reduceat(M.indices, M.indptr[:-1])
    hi = np.maximum.reduceat(M.indices, M.indptr[:-1])
    reach = np.maximum.accumulate(hi)[:-1]  # right-most member of rows 0..i
    floor = np.minimum.accumulate(lo[::-1])[::-1][1:]  # left-most member of rows i+1..
    cuts = np.flatnonzero(reach < floor) + 1
    row_edges = [0, *cuts.tolist(), K]
    col_edges = [0, *floor[cuts - 1].tolist(), n]
    return [(slice(row_edges[i], row_edges[i + 1]), slice(col_edges[i], col_edges[i + 1]))
            for i in range(len(row_edges) - 1)]


def _lasso_sklearn(M: sp.csc_matrix, Y: np.ndarray, cfg: RecoveryConfig) -> tuple[np.ndarray, np.ndarray]:
    """The Lasso of every row of Y (q x K) at alpha = 1, in one multi-target fit: scikit-learn solves
    each target on its own, but checks the input and centres M once per call instead of once per query."""
    from sklearn.linear_model import Lasso

    model = Lasso(alpha=1.0, fit_intercept=cfg.fit_intercept, max_iter=cfg.max_iter, tol=cfg.tol)
    model.fit(M, Y.T)
    coef = np.asarray(model.coef_, dtype=np.float64).reshape(Y.shape[0], M.shape[1])
    return coef, np.atleast_1d(np.asarray(model.intercept_, dtype=np.float64))


def _fista(M: sp.csr_matrix, Y: np.ndarray, alpha: np.ndarray, cfg: RecoveryConfig) -> tuple[np.ndarray, np.ndarray]:
    """Batched FISTA for all queries; centering of M is applied implicitly (rank-one correction)."""
    K, n = M.shape
    Mt = M.T.tocsr()
    mu = np.asarray(M.mean(axis=0)).ravel() if cfg.fit_intercept else np.zeros(n)
    y_mean = Y.mean(axis=1, keepdims=True) if cfg.fit_intercept else np.zeros((Y.shape[0], 1))
    Yc = (Y - y_mean).T  # K x Q

    def matvec(W: np.ndarray) -> np.ndarray:  # (n x Q) -> (K x Q), centred M
        return M @ W - (mu @ W)[None, :]

    def rmatvec(R: np.ndarray) -> np.ndarray:  # (K x Q) -> (n x Q)
        return Mt @ R - np.outer(mu, R.sum(axis=0))

    v = np.random.default_rng(cfg.seed).standard_normal((n, 1))
    for _ in range(50):  # power iteration for ||M_c||_2^2
        v = rmatvec(matvec(v))
        v /= np.linalg.norm(v)
    lipschitz = float(np.linalg.norm(matvec(v)) ** 2) / K * 1.01 + 1e-12
    step = 1.0 / lipschitz
    W = np.zeros((n, Y.shape[0]))
    Z, t = W.copy(), 1.0
    thresh = (alpha * step)[None, :]
    for _ in range(cfg.max_iter):
        grad = rmatvec(matvec(Z) - Yc) / K
        W_new = Z - step * grad
        W_new = np.sign(W_new) * np.maximum(np.abs(W_new) - thresh, 0.0)
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        Z = W_new + ((t - 1) / t_new) * (W_new - W)
        delta = np.abs(W_new - W).max()
        W, t = W_new, t_new
        if delta < cfg.tol * max(1.0, np.abs(W).max()):
            break
    intercept = y_mean.ravel() - mu @ W
    return W.T, intercept


def ridge(M: sp.spmatrix, Y: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge instead of Lasso (influence need not be sparse): per query
    argmin 1/(2K) ||y - b - M w||^2 + alpha/2 ||w||^2 with alpha = ratio x the mean eigenvalue of
    Mc^T Mc / K (Mc: M centred over subsets), one shared solve for all queries, in the dual when K < n."""
    K, n = M.shape
    Mc = np.asarray(M.todense(), dtype=np.float64)
    mu = Mc.mean(axis=0)
    Mc -= mu
    Yc = Y - Y.mean(axis=1, keepdims=True)
    alpha = ratio * float((Mc ** 2).sum()) / (K * n)
    if K < n:  # w = Mc^T (Mc Mc^T + K alpha I)^-1 yc
        W = (Mc.T @ np.linalg.solve(Mc @ Mc.T + K * alpha * np.eye(K), Yc.T)).T
    else:
        W = np.linalg.solve(Mc.T @ Mc + K * alpha * np.eye(n), Mc.T @ Yc.T).T
    return W, Y.mean(axis=1) - W @ mu


def _solve(M: sp.csr_matrix, Y: np.ndarray, alpha: np.ndarray, cfg: RecoveryConfig) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (Q x n) and intercepts (Q,) for per-query alphas.

    scikit-learn's branch uses the scaling w(y, alpha) = alpha w(y / alpha, 1) (the objective at
    (y, alpha) is alpha^2 times the one at (y / alpha, 1), and sklearn's tolerance is relative to
    ||y||^2), so every query is solved at alpha = 1 and the queries go to a few multi-target fits, one
    per parallel job. A query with alpha <= 0 (constant responses) has no influence. Hitting max_iter is
    not an error (the iterate is still a usable estimate), so sklearn's warning is silenced, around the
    threads (the warnings filter is process-wide); each query's fit (r2) is reported instead."""
    if cfg.solver == "fista":
        return _fista(M, Y, alpha, cfg)
    from sklearn.exceptions import ConvergenceWarning

    W, b = np.zeros((Y.shape[0], M.shape[1])), Y.mean(axis=1)
    live = np.flatnonzero(alpha > 0)
    if not live.size:
        return W, b
    chunks = np.array_split(live, min(effective_n_jobs(cfg.n_jobs), live.size))  # none empty
    Mc = M.tocsc()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        out = Parallel(n_jobs=len(chunks), prefer="threads")(
            delayed(_lasso_sklearn)(Mc, Y[c] / alpha[c, None], cfg) for c in chunks)
    for c, (w, b_c) in zip(chunks, out):
        W[c], b[c] = w * alpha[c, None], b_c * alpha[c]
    return W, b


def _fit(M: sp.csr_matrix, Y: np.ndarray, ratio: np.ndarray, cfg: RecoveryConfig) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (Q x n) and the fitted offsets (Q x K: each subset's intercept) for per-query ratios of
    alpha_max; block by block when ``cfg.per_shard`` and the design is block diagonal."""
    blocks = diagonal_blocks(M) if cfg.per_shard else [(slice(0, M.shape[0]), slice(0, M.shape[1]))]
    alpha = ratio * alpha_max(M, Y, blocks)
    if len(blocks) == 1:
        W, b = _solve(M, Y, alpha, cfg)
        return W, np.repeat(b[:, None], M.shape[0], axis=1)
    W, offsets = np.zeros((Y.shape[0], M.shape[1])), np.zeros(Y.shape)
    for rows, cols in blocks:
        K_s = rows.stop - rows.start
        W[:, cols], b = _solve(M[rows, cols].tocsr(), Y[:, rows], alpha * M.shape[0] / K_s, cfg)
        offsets[:, rows] = b[:, None]
    return W, offsets


def _held_offsets(M: sp.csr_matrix, fit_offsets: np.ndarray, held: np.ndarray, cfg: RecoveryConfig) -> np.ndarray:
    """Each held-out subset's intercept: the mean fitted intercept of its block's other subsets."""
    blocks = diagonal_blocks(M) if cfg.per_shard else [(slice(0, M.shape[0]), slice(0, M.shape[1]))]
    block = np.zeros(M.shape[0], dtype=np.int64)
    for i, (rows, _) in enumerate(blocks):
        block[rows] = i
    fitted_block = block[~held]
    means = np.stack([fit_offsets[:, fitted_block == i].mean(axis=1) if (fitted_block == i).any()
                      else fit_offsets.mean(axis=1) for i in range(len(blocks))], axis=1)
    return means[:, block[held]]


def _choose_ratio(M: sp.csr_matrix, Y: np.ndarray, cfg: RecoveryConfig) -> np.ndarray:
    """Per query, the grid ratio with the smallest error on held-out subsets."""
    K = M.shape[0]
    rng = np.random.default_rng(cfg.seed)
    held = np.zeros(K, dtype=bool)
    held[rng.choice(K, size=max(1, int(round(cfg.holdout_fraction * K))), replace=False)] = True
    M_fit, M_held = M[~held], M[held]
    errors = []
    for ratio in cfg.lambda_grid:
        W, offsets = _fit(M_fit, Y[:, ~held], np.full(Y.shape[0], ratio), cfg)
        pred = np.asarray(M_held @ W.T).T + _held_offsets(M, offsets, held, cfg)
        errors.append(((pred - Y[:, held]) ** 2).mean(axis=1))
    best = np.argmin(np.stack(errors), axis=0)
    return np.asarray(cfg.lambda_grid)[best]


def recover(Y: np.ndarray, membership: sp.csr_matrix, cfg: RecoveryConfig) -> Recovery:
    """Influence of every training example on every query from the responses Y (Q x K)."""
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[1] != membership.shape[0]:
        raise StrideInputError(f"responses of shape {Y.shape} do not match K={membership.shape[0]} subsets")
    if not np.isfinite(Y).all():
        raise StrideInputError("responses contain NaN/inf; re-measure the perturbation matrix")
    M = membership.tocsr().astype(np.float64)
    if cfg.lambda_ratio == "auto":
        ratio = _choose_ratio(M, Y, cfg)
    else:
        ratio = np.full(Y.shape[0], float(cfg.lambda_ratio))
    if cfg.solver == "ridge":
        if len(set(ratio.tolist())) > 1:
            raise StrideInputError("the ridge solver takes one lambda_ratio for all queries, not 'auto'")
        alpha = ratio * alpha_max(M, Y)
        W, b = ridge(M, Y, float(ratio[0]))
        offsets = b[:, None]
    else:
        alpha = ratio * alpha_max(M, Y, diagonal_blocks(M) if cfg.per_shard else None)
        W, offsets = _fit(M, Y, ratio, cfg)
    pred = np.asarray(M @ W.T).T + offsets
    ss_res = ((Y - pred) ** 2).sum(axis=1)
    ss_tot = ((Y - Y.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    r2 = 1 - ss_res / np.maximum(ss_tot, 1e-30)
    influence = sp.csr_matrix(W.astype(np.float32))
    influence.eliminate_zeros()
    return Recovery(
        influence=influence, ratio=ratio, alpha=alpha, r2=r2, nnz=np.diff(influence.indptr).astype(np.int64)
    )
