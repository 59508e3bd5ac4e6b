"""The per-query Lasso over a sharded (block-diagonal) design: one joint solve (baseline) vs shard by shard.

The pipeline's design at the default profile's settings (shards of 256 passages, K = 48 subsets per
full shard, d = 8), n from 1k to 100k. Responses are planted, y = M w + (one offset per shard's bank)
+ noise with 8 non-zero examples per shard and query, so each solve has the pipeline's shape and a
known answer. One job (recovery.n_jobs: 1), so seconds are one core's; ratios are from the same run.
Also refits the n-slope of STRIDE end to end in ``benchmarks/reports/scale.json`` with its recover stage
replaced by the per-shard seconds measured here (its other stages as that report measured them).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_shard_recovery.py   # -> benchmarks/reports/shard_recovery.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from stride_assets.engine.artifacts import write_json
from stride_assets.engine.config import RecoveryConfig
from stride_assets.engine.design import draw_design, shard_K
from stride_assets.engine.evaluation.scale_bench import QUERIES, _shard_sizes
from stride_assets.engine.recovery import recover

REPORTS = Path(__file__).resolve().parent / "reports"
SHARD, K, D, PER_SHARD_NONZERO = 256, 48, 8, 8
SIZES = (1_000, 3_000, 10_000, 30_000, 100_000)
BUDGET_S = 20.0  # seconds of solving per (n, solver) at most; at least 2 queries


def planted(n: int, queries: int, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    sizes = _shard_sizes(n, SHARD)
    Ks = [shard_K(K, D, s, SHARD) for s in sizes]
    M = sp.block_diag([draw_design(s, k, D, seed=seed + i).membership for i, (s, k) in enumerate(zip(sizes, Ks))],
                      format="csr")
    rng = np.random.default_rng(seed + 1)
    W = np.zeros((queries, n))
    for q in range(queries):
        idx = rng.choice(n, PER_SHARD_NONZERO * len(sizes), replace=False)
        W[q, idx] = rng.uniform(0.5, 2.0, idx.size) * rng.choice([-1, 1], idx.size)
    offsets = np.repeat(rng.normal(0, 1.0, len(sizes)), Ks)
    Y = np.asarray(M @ W.T).T + offsets + 0.05 * rng.standard_normal((queries, M.shape[0]))
    return M, W, Y


def recall(W: np.ndarray, W_hat: np.ndarray) -> float:
    k = int((W[0] != 0).sum())
    return float(np.mean([len(set(np.argsort(-np.abs(W_hat[q]))[:k]) & set(np.flatnonzero(W[q]))) / k
                          for q in range(W.shape[0])]))


def timed_recovery(M: sp.csr_matrix, W: np.ndarray, Y: np.ndarray, per_shard: bool) -> dict:
    cfg = RecoveryConfig(lambda_ratio=0.1, n_jobs=1, per_shard=per_shard)
    recover(Y[:1], M, cfg)  # warm-up: imports, sparse formats
    start = time.perf_counter()
    first = recover(Y[:2], M, cfg)
    per_query = (time.perf_counter() - start) / 2
    more = int(min(Y.shape[0] - 2, max(0, BUDGET_S / per_query - 2)))
    found = [first.influence.toarray()]
    if more:
        start = time.perf_counter()
        found.append(recover(Y[2:2 + more], M, cfg).influence.toarray())
        per_query = (per_query * 2 + time.perf_counter() - start) / (2 + more)
    q = 2 + more
    return {"per_query_s": per_query, "queries": q, "top_k_recall": recall(W[:q], np.vstack(found))}


def slope(n: list[int], seconds: list[float]) -> float:
    return float(np.polyfit(np.log(n), np.log(seconds), 1)[0])


def refit_scale(per_shard_s: dict[int, float]) -> dict | None:
    """scale.json's default-size STRIDE end to end with the recover stage replaced by the per-shard seconds."""
    path = REPORTS / "scale.json"
    if not path.exists():
        return None
    scale = json.loads(path.read_text())
    rows = [s for s in scale["sizes"] if not s.get("extrapolated") and s["n"] in per_shard_s
            and s["params"] == scale["sizes"][0]["params"]]
    out = []
    for s in rows:
        st = s["stride"]
        per_query = st["per_query_s"] - st["stages"]["recover"]["seconds"] + per_shard_s[s["n"]]
        end = st["one_time_s"] + QUERIES * per_query
        logra = s["logra"]["one_time_s"] + QUERIES * s["logra"]["per_query_s"]
        out.append({"n": s["n"], "end_to_end_s_joint": st["end_to_end_s"], "end_to_end_s_per_shard": end,
                    "ratio_to_logra_joint": s["ratio_end_to_end"]["logra"], "ratio_to_logra_per_shard": end / logra})
    return {"rows": out, "n_slope_joint": slope([r["n"] for r in out], [r["end_to_end_s_joint"] for r in out]),
            "n_slope_per_shard": slope([r["n"] for r in out], [r["end_to_end_s_per_shard"] for r in out]),
            "how": "scale.json's measured/scaled stages at the default size, recover stage replaced by this run's "
                   "per-shard seconds per query (planted responses of the same shape)"}


def main() -> None:
    rows = []
    print(f"{'n':>8}{'K_all':>7}{'joint ms/q':>12}{'per-shard ms/q':>16}{'ratio':>7}{'recall joint':>14}{'per-shard':>11}")
    for n in SIZES:
        M, W, Y = planted(n, queries=64)
        joint, split = timed_recovery(M, W, Y, False), timed_recovery(M, W, Y, True)
        rows.append({"n": n, "K_all": M.shape[0], "joint": joint, "per_shard": split,
                     "ratio": split["per_query_s"] / joint["per_query_s"]})
        print(f"{n:>8}{M.shape[0]:>7}{joint['per_query_s'] * 1e3:>12.1f}{split['per_query_s'] * 1e3:>16.1f}"
              f"{rows[-1]['ratio']:>7.3f}{joint['top_k_recall']:>14.3f}{split['top_k_recall']:>11.3f}", flush=True)
    ns = [r["n"] for r in rows]
    report = {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "rows": rows,
        "lasso_n_slope": {"joint": slope(ns, [r["joint"]["per_query_s"] for r in rows]),
                          "per_shard": slope(ns, [r["per_shard"]["per_query_s"] for r in rows])},
        "scale_refit": refit_scale({r["n"]: r["per_shard"]["per_query_s"] for r in rows}),
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_shard_recovery.py",
    }
    print("Lasso per-query n-slope:", {k: round(v, 3) for k, v in report["lasso_n_slope"].items()})
    if report["scale_refit"]:
        r = report["scale_refit"]
        print(f"STRIDE end to end n-slope (scale.json, recover re-measured): joint {r['n_slope_joint']:.3f}, "
              f"per shard {r['n_slope_per_shard']:.3f}")
        for row in r["rows"]:
            print(f"  n {row['n']:>7,}: STRIDE/logra joint {row['ratio_to_logra_joint']:.2f} -> per shard "
                  f"{row['ratio_to_logra_per_shard']:.2f}")
    write_json(report, REPORTS / "shard_recovery.json")


if __name__ == "__main__":
    main()
