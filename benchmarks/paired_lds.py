"""Is one method's LDS above another's on the same queries? Per-query paired differences (issue 10).

Two methods' stored scores (``DIR/scores/NAME.parquet``, from any folders) are scored against one folder's
test retrains (``--truth DIR``, its ``eval_subsets`` and ``retrained_losses``); the difference is taken query by
query, so its standard error leaves out how hard each query is, which the LDS std over queries includes:

    .venv/bin/python benchmarks/paired_lds.py --truth DIR A=DIR/scores/x.parquet B=OTHER/scores/y.parquet [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from design_averaging import ground_truth, score_matrix
from stride_assets.engine.evaluation.lds import lds


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Per-query LDS of ``a`` minus ``b`` over the queries where both are defined: mean, standard error,
    and how many queries each side wins."""
    ok = ~(np.isnan(a) | np.isnan(b))
    diff = a[ok] - b[ok]
    return {"mean_difference": float(diff.mean()), "standard_error": float(diff.std(ddof=1) / np.sqrt(len(diff))),
            "a_wins": int((diff > 0).sum()), "b_wins": int((diff < 0).sum()), "queries": int(len(diff))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truth", required=True, type=Path, help="the `stride bench` folder whose test retrains score both")
    ap.add_argument("a", help="LABEL=scores.parquet")
    ap.add_argument("b", help="LABEL=scores.parquet")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    S, L, examples, queries = ground_truth(args.truth)
    (la, pa), (lb, pb) = (x.split("=", 1) for x in (args.a, args.b))
    per_query = {label: lds(score_matrix(Path(p), examples, queries), S, L).per_query for label, p in ((la, pa), (lb, pb))}
    result = {"truth": str(args.truth), "a": la, "b": lb, "lds": {k: float(np.nanmean(v)) for k, v in per_query.items()},
              **paired(per_query[la], per_query[lb])}
    print(f"{la} {result['lds'][la]:.4f} vs {lb} {result['lds'][lb]:.4f}: difference {result['mean_difference']:+.4f} "
          f"± {result['standard_error']:.4f} (SE), {la} wins {result['a_wins']} of {result['queries']} queries")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
