"""LDS of STRIDE influence averaged over independent designs, from a bench folder's stored scores (issue 10).

Each seed of a STRIDE attempt (``NAME``, ``NAME_s1``, ...) draws its own design and trains its own operators;
averaging the influence of R such runs is a measurement R times as dense, made of R separate Lassos. This
scores every R-combination of the stored seeds on the folder's own test retrains, so the quality gained by
spending R times the operator training shows without training anything, and (from 3 seeds on) fits
a + b / R through the means, whose a is where averaging ever more runs would level off:

    .venv/bin/python benchmarks/design_averaging.py --out DIR --method attempt_default_d6_K_x2 [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import polars as pl

from stride_assets.engine.evaluation.bench import scores_matrix
from stride_assets.engine.evaluation.lds import lds


def ground_truth(out: Path) -> tuple[np.ndarray, np.ndarray, dict[str, int], dict[str, int]]:
    """The folder's test subsets (m, n) and retrained losses (m, Q), with the example and query indices."""
    subsets = pl.read_parquet(out / "eval_subsets.parquet")
    losses = pl.read_parquet(out / "retrained_losses.parquet")
    examples = {e: i for i, e in enumerate(sorted(set(subsets["example_id"].to_list())))}
    queries = {q: i for i, q in enumerate(sorted(set(losses["query_id"].to_list())))}
    S = np.zeros((subsets["subset_id"].max() + 1, len(examples)), dtype=bool)
    S[subsets["subset_id"].to_numpy(), [examples[e] for e in subsets["example_id"]]] = True
    L = np.full((S.shape[0], len(queries)), np.nan)
    L[losses["subset_id"].to_numpy(), [queries[q] for q in losses["query_id"]]] = losses["loss"].to_numpy()
    if np.isnan(L).any():
        raise ValueError(f"{out}: retrained_losses.parquet lacks some (subset, query) losses")
    return S, L, examples, queries


def score_matrix(path: Path, examples: dict[str, int], queries: dict[str, int]) -> np.ndarray:
    """A stored score table (non-zeros) as a dense (Q, n) matrix; examples in no test subset are dropped
    (they add nothing to any subset's predicted sum)."""
    return scores_matrix(pl.read_parquet(path).filter(pl.col("example_id").is_in(list(examples))), queries, examples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="a `stride bench` / stride_attempts.py output folder")
    ap.add_argument("--method", required=True, help="the seed-0 name; its seeds are NAME_s1, NAME_s2, ...")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    S, L, examples, queries = ground_truth(args.out)
    paths = [args.out / "scores" / f"{args.method}.parquet"]
    paths += sorted((args.out / "scores").glob(f"{args.method}_s*.parquet"), key=lambda p: int(p.stem.rsplit("_s", 1)[1]))
    paths = [p for p in paths if p.exists()]
    if not paths:
        raise SystemExit(f"no scores of {args.method} under {args.out / 'scores'}")
    runs = [score_matrix(p, examples, queries) for p in paths]
    rows = []
    for R in range(1, len(runs) + 1):
        values = [lds(sum(runs[i] for i in combo), S, L).mean for combo in itertools.combinations(range(len(runs)), R)]
        rows.append({"designs": R, "combinations": len(values), "lds_mean": float(np.mean(values)),
                     "lds_min": float(min(values)), "lds_max": float(max(values))})
        print(f"{R} design(s) averaged ({len(values)} combinations): LDS {np.mean(values):.4f} "
              f"(min {min(values):.4f}, max {max(values):.4f})")
    result = {"method": args.method, "seeds": [p.stem for p in paths], "rows": rows}
    if len(rows) >= 3:  # least-squares a + b / R through the means: a is the limit of averaging ever more runs
        R = np.array([r["designs"] for r in rows], dtype=float)
        a, b = np.linalg.lstsq(np.c_[np.ones_like(R), 1 / R], [r["lds_mean"] for r in rows], rcond=None)[0]
        result["limit_fit"] = {"a": float(a), "b": float(b)}
        print(f"fit a + b / R: limit a = {a:.4f} (b = {b:.4f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
