"""Sparse-recovery cost, baselines in the same run.

Planted k-sparse influence, y = M w + noise. Two comparisons, each printed as a ratio:

1. scikit-learn coordinate descent as the engine runs it (queries scaled to alpha = 1 and solved in
   a few multi-target fits) against the former path, one ``Lasso`` fit per query, on the same
   problems: seconds, and the largest coefficient difference (the two solve the same problem).
2. batched FISTA against scikit-learn, with top-k support recall of each.

Designs: one joint design (the harness) at a few sizes, and a block-diagonal pipeline design
(the default shard size and K, each shard its own subsets).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_recovery.py
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, delayed

from stride_assets.engine.config import CorpusConfig, DesignConfig, RecoveryConfig
from stride_assets.engine.design import draw_design, shard_K
from stride_assets.engine.recovery import alpha_max, diagonal_blocks, recover


def planted(M: sp.csr_matrix, Q: int, k: int = 20, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    K, n = M.shape
    W = np.zeros((Q, n))
    for q in range(Q):
        W[q, rng.choice(n, k, replace=False)] = rng.uniform(0.5, 2.0, k) * rng.choice([-1, 1], k)
    return W, np.asarray(M @ W.T).T + 0.05 * rng.standard_normal((Q, K))


def per_query_fits(M: sp.csr_matrix, Y: np.ndarray, cfg: RecoveryConfig) -> np.ndarray:
    """The former path: per block, one sklearn Lasso per query at its own alpha."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    def one(Mc, y, alpha):
        return Lasso(alpha=alpha, fit_intercept=True, max_iter=cfg.max_iter, tol=cfg.tol).fit(Mc, y).coef_

    blocks = diagonal_blocks(M)
    alpha = float(cfg.lambda_ratio) * alpha_max(M, Y, blocks)
    W = np.zeros((Y.shape[0], M.shape[1]))
    for rows, cols in blocks:
        Mc, scale = M[rows, cols].tocsc(), M.shape[0] / (rows.stop - rows.start)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            out = Parallel(n_jobs=cfg.n_jobs, prefer="threads")(
                delayed(one)(Mc, Y[q, rows], float(alpha[q]) * scale) for q in range(Y.shape[0]))
        W[:, cols] = np.stack(out)
    return W


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def batched_vs_per_query(label: str, M: sp.csr_matrix, Q: int) -> None:
    cfg = RecoveryConfig(lambda_ratio=0.1)
    _, Y = planted(M, Q)
    per_query_fits(M, Y[:2], cfg), recover(Y[:2], M, cfg)  # warm-up: imports, thread pools
    W_old, t_old = timed(lambda: per_query_fits(M, Y, cfg))
    rec, t_new = timed(lambda: recover(Y, M, cfg))
    diff = np.abs(rec.influence.toarray() - W_old).max() / max(np.abs(W_old).max(), 1e-30)
    print(f"{label:<34}{M.shape[0]:>6}{M.shape[1]:>8}{Q:>6}{t_old:>10.2f}{t_new:>9.2f}"
          f"{t_new / t_old:>7.3f}{1e3 * t_new / Q:>10.3f}{diff:>10.1e}")


def main() -> None:
    print("1. sklearn: batched multi-target fits vs one fit per query (same run)")
    print(f"{'design':<34}{'K':>6}{'n':>8}{'Q':>6}{'per-q s':>10}{'batch s':>9}{'ratio':>7}"
          f"{'ms/query':>10}{'rel diff':>10}")
    for n, K, Q in ((2000, 256, 100), (20000, 512, 100)):
        batched_vs_per_query(f"joint n={n}", draw_design(n, K, 10, seed=0).membership, Q)
    dc, size = DesignConfig(), CorpusConfig().shard_size
    for shards in (2, 20):
        M = sp.block_diag([draw_design(size, shard_K(dc.K, dc.d, size, size), dc.d, seed=s).membership
                           for s in range(shards)], format="csr")
        batched_vs_per_query(f"pipeline {shards} shards of {size}", M, 1000 if shards == 2 else 100)

    print("\n2. batched FISTA vs sklearn (same run)")
    print(f"{'n':>7}{'K':>6}{'Q':>5}{'sklearn s':>11}{'fista s':>9}{'ratio':>7}{'recall sk':>10}{'recall fi':>10}")
    for n, K, Q in ((2000, 256, 100), (20000, 512, 100), (100000, 1000, 50)):
        design = draw_design(n, K, 10, seed=0)
        W, Y = planted(design.membership, Q)
        row, recalls = [], []
        for solver in ("sklearn", "fista"):
            rec, seconds = timed(lambda: recover(Y, design.membership, RecoveryConfig(solver=solver, lambda_ratio=0.1)))
            row.append(seconds)
            Wh = rec.influence.toarray()
            recalls.append(np.mean([len(set(np.argsort(-np.abs(Wh[q]))[:20]) & set(np.flatnonzero(W[q]))) / 20
                                    for q in range(Q)]))
        print(f"{n:>7}{K:>6}{Q:>5}{row[0]:>11.2f}{row[1]:>9.2f}{row[1] / row[0]:>7.2f}{recalls[0]:>10.2f}{recalls[1]:>10.2f}")


if __name__ == "__main__":
    main()
