"""Sparse-recovery cost: scikit-learn coordinate descent (baseline) vs batched FISTA.

Planted k-sparse influence, y = M w + noise, at a few sizes; prints seconds, the FISTA/sklearn
ratio from the same run, and top-k support recall of each.

    .venv/bin/python benchmarks/bench_recovery.py
"""

from __future__ import annotations

import time

import numpy as np

from stride_assets.engine.config import RecoveryConfig
from stride_assets.engine.design import draw_design
from stride_assets.engine.recovery import recover


def main() -> None:
    print(f"{'n':>7}{'K':>6}{'Q':>5}{'sklearn s':>11}{'fista s':>9}{'ratio':>7}{'recall sk':>10}{'recall fi':>10}")
    for n, K, Q in ((2000, 256, 100), (20000, 512, 100), (100000, 1000, 50)):
        design = draw_design(n, K, 10, seed=0)
        rng = np.random.default_rng(1)
        W = np.zeros((Q, n))
        for q in range(Q):
            W[q, rng.choice(n, 20, replace=False)] = rng.uniform(0.5, 2.0, 20) * rng.choice([-1, 1], 20)
        Y = np.asarray(design.membership @ W.T).T + 0.05 * rng.standard_normal((Q, K))
        row, recalls = [], []
        for solver in ("sklearn", "fista"):
            start = time.perf_counter()
            rec = recover(Y, design.membership, RecoveryConfig(solver=solver, lambda_ratio=0.1))
            row.append(time.perf_counter() - start)
            Wh = rec.influence.toarray()
            recalls.append(np.mean([len(set(np.argsort(-np.abs(Wh[q]))[:20]) & set(np.flatnonzero(W[q]))) / 20
                                    for q in range(Q)]))
        print(f"{n:>7}{K:>6}{Q:>5}{row[0]:>11.2f}{row[1]:>9.2f}{row[1] / row[0]:>7.2f}{recalls[0]:>10.2f}{recalls[1]:>10.2f}")


if __name__ == "__main__":
    main()
