"""Does solving the sharded design shard by shard (one intercept per shard's bank) lose attribution quality?

On a store made by ``stride run`` (the default profile: pydoc, 5 shards), retrains the base-model
recipe on M random halves of the corpus (the evaluation group's ``eval_subsets`` / ``retrained_losses``,
kept in the store, so a second call reuses them) and scores the LDS of STRIDE's influence recovered
from the same stored responses two ways: one joint Lasso (one intercept, ``recovery.per_shard: false``)
and shard by shard (``per_shard: true``), at a few lambda ratios.

    .venv/bin/stride run --store /tmp/ps_store --no-mlflow
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_shard_quality.py /tmp/ps_store --m 24
    # -> benchmarks/reports/shard_quality.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from stride_assets.engine import shards as shards_mod
from stride_assets.engine.artifacts import write_json
from stride_assets.engine.attribution import by_stride
from stride_assets.engine.config import load_profile
from stride_assets.engine.evaluation.config import EvaluationConfig, EvaluationRun
from stride_assets.engine.evaluation.lds import lds
from stride_assets.engine.evaluation.pipeline_eval import eval_subsets, retrain_keys, retrained_losses
from stride_assets.engine.store import Store

REPORTS = Path(__file__).resolve().parent / "reports"
RATIOS = (0.1, 0.2, 0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store")
    parser.add_argument("--m", type=int, default=24, help="retrains (random halves)")
    parser.add_argument("--profile", default="default")
    args = parser.parse_args()
    started = time.perf_counter()
    store = Store(args.store)
    profile = load_profile(args.profile)
    run = EvaluationRun(pipeline=profile.config, evaluation=EvaluationConfig(m=args.m))
    if not store.file("eval_subsets").exists():
        eval_subsets(run, store, print)
    for key in retrain_keys(run):
        if not store.file("retrained_losses", key).exists():
            retrained_losses(run, store, print, key)
    subsets = store.read_eval_subsets()
    frame = store.read_retrained_losses()
    batches = shards_mod.batch_names(run.pipeline)
    rows = []
    for ratio in RATIOS:
        for per_shard in (False, True):
            cfg = run.pipeline.model_copy(update={"recovery": run.pipeline.recovery.model_copy(
                update={"per_shard": per_shard, "lambda_ratio": ratio})})
            found = [by_stride(cfg, store, b) for b in batches]
            qids = [q for f in found for q in f.per_query["query_id"].to_list()]
            scores = np.vstack([f.influence.toarray() for f in found])
            losses = frame.pivot(on="query_id", index="subset_id", values="loss").sort("subset_id").select(qids)
            result = lds(scores, subsets[: losses.height], losses.to_numpy())
            rows.append({"lambda_ratio": ratio, "per_shard": per_shard, "lds_mean": result.mean, "lds_std": result.std,
                         "nnz_per_query": float(np.mean([f.metadata["nnz_per_query"] for f in found])),
                         "recover_seconds": float(sum(f.seconds for f in found))})
            print(f"lambda_ratio {ratio}: {'per shard' if per_shard else 'joint    '} LDS {result.mean:.3f} ± "
                  f"{result.std:.3f}  nnz/query {rows[-1]['nnz_per_query']:.0f}  {rows[-1]['recover_seconds']:.1f}s",
                  flush=True)
    write_json({"what": __doc__.split("\n\n")[1].replace("\n", " "), "profile": args.profile, "retrains": args.m,
                "queries": len(qids), "n": int(subsets.shape[1]), "rows": rows,
                "command": f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_shard_quality.py STORE --m {args.m}",
                "seconds": time.perf_counter() - started}, REPORTS / "shard_quality.json")


if __name__ == "__main__":
    main()
