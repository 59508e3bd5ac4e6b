"""Quality of the pipeline's own attributions: retrain its base-model recipe on random subsets of
its training corpus, record the query losses, and score STRIDE's influence (and cheap baselines)
by LDS. Three stages, so the retrains can be Dagster partitions (resumable, fanned out):

    eval_subsets -> retrained_losses[retrain_000 .. retrain_{m-1}] -> lds_report

Retraining needs the recipe, so it applies when the pipeline trained its base model itself
(``model.path`` unset); for a user's model it fails early with a clear message.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import polars as pl
import scipy.sparse as sp

from stride_assets.engine.artifacts import Store, file_digest, write_parquet
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.evaluation.lds import lds
from stride_assets.engine.evaluation.lm_task import GPTRecipe, LMTask
from stride_assets.engine.evaluation.task import Trained, draw_subsets
from stride_assets.engine.result import StageResult, markdown_table

Log = Callable[[str], None]


def retrain_keys(cfg: StrideConfig) -> list[str]:
    return [f"retrain_{j:03d}" for j in range(cfg.evaluation.m)]


def _task(cfg: StrideConfig, store: Store) -> LMTask:
    """The pipeline's corpus, queries and base-model recipe as a harness task (test split = queries)."""
    from stride_assets.engine.shards import batch_names, shard_names
    from stride_assets.engine.stages import read_all_queries, read_train

    if cfg.model.path is not None:
        raise StrideInputError(
            "retraining ground truth needs the base-model recipe: it applies to the model trained here "
            f"(model.path unset), not to {cfg.model.path!r}; use `stride bench` with a fine-tuning task instead"
        )
    tiny = cfg.model.tiny
    recipe = GPTRecipe(n_layer=tiny.n_layer, n_embd=tiny.n_embd, n_head=tiny.n_head, vocab_size=tiny.vocab_size,
                       max_length=cfg.model.max_length, epochs=None, steps=tiny.steps, batch_size=tiny.batch_size,
                       lr=tiny.lr, weight_decay=tiny.weight_decay)
    train, queries = read_train(store, shard_names(cfg.corpus)), read_all_queries(store, batch_names(cfg))
    texts, ids = queries["text"].to_list(), queries["query_id"].to_list()
    return LMTask(train["text"].to_list(), {"val": texts[:1], "test": texts}, recipe, name="pipeline",
                  example_ids=train["example_id"].to_list(), query_ids={"val": ids[:1], "test": ids})


def read_subsets(store: Store) -> np.ndarray:
    frame = pl.read_parquet(store.require("eval_subsets", "eval_subsets.parquet"))
    m, n = int(store.read_args("eval_subsets")["m"]), int(store.read_args("eval_subsets")["n"])
    out = np.zeros((m, n), dtype=bool)
    out[frame["subset_id"].to_numpy(), frame["example_index"].to_numpy()] = True
    return out


def eval_subsets(cfg: StrideConfig, store: Store, log: Log) -> StageResult:
    """m random subsets of the training corpus (own seed, independent of the subset design)."""
    from stride_assets.engine.shards import shard_names
    from stride_assets.engine.stages import read_train

    ec = cfg.evaluation
    n = read_train(store, shard_names(cfg.corpus)).height
    subsets = draw_subsets(n, ec.m, ec.fraction, ec.seed)
    rows, cols = np.nonzero(subsets)
    path = write_parquet(pl.DataFrame({"subset_id": rows.astype(np.int32), "example_index": cols.astype(np.int32)}),
                         store.path("eval_subsets", "eval_subsets.parquet"))
    store.write_args("eval_subsets", {**ec.model_dump(), "n": n})
    log(f"evaluation: {ec.m} subsets of {ec.fraction:.0%} of n={n}")
    return StageResult("eval_subsets", path.parent, metadata={"m": ec.m, "n": n, "fraction": ec.fraction},
                       params={f"evaluation.{k}": v for k, v in ec.model_dump().items()}, fingerprint=file_digest(path))


def retrained_losses(cfg: StrideConfig, store: Store, key: str, log: Log) -> StageResult:
    """One retrain: the base-model recipe on evaluation subset ``key``; every query's loss."""
    j = retrain_keys(cfg).index(key)
    task = _task(cfg, store)
    trained = task.train(np.flatnonzero(read_subsets(store)[j]), seed=cfg.model.tiny.seed)
    losses = task.query_losses(trained.model, "test")
    path = write_parquet(pl.DataFrame({"subset_id": [j] * len(losses), "query_id": task.query_ids["test"],
                                       "loss": losses}), store.path("retrained_losses", f"{key}.parquet"))
    log(f"{key}: mean query loss {losses.mean():.4f} after {trained.info['seconds']:.1f}s")
    return StageResult("retrained_losses", path.parent,
                       metadata={"subset": j, "mean_loss": float(losses.mean()), "seconds": trained.info["seconds"]},
                       metrics={"mean_query_loss": float(losses.mean())}, fingerprint=file_digest(path))


def _stride_scores(cfg: StrideConfig, store: Store, query_ids: list[str], n: int) -> np.ndarray:
    from stride_assets.engine.shards import batch_names
    from stride_assets.engine.stages import read_scores

    scores = read_scores(store, batch_names(cfg))
    row = {q: i for i, q in enumerate(query_ids)}
    M = sp.csr_matrix((scores["score"].to_numpy(), ([row[q] for q in scores["query_id"]],
                                                    scores["example_index"].to_numpy())), shape=(len(query_ids), n))
    return M.toarray()


def lds_report(cfg: StrideConfig, store: Store, log: Log) -> StageResult:
    """LDS of STRIDE's stored influence scores and of cheap baselines on the same retrains."""
    from stride_assets.engine.evaluation.methods import METHODS
    from stride_assets.engine.stages import load_base_model

    subsets = read_subsets(store)
    parts = sorted(store.stage("retrained_losses").glob("retrain_*.parquet"))
    frame = pl.concat([pl.read_parquet(p) for p in parts]).sort(["subset_id"])
    done = frame["subset_id"].unique().sort().to_numpy()
    if len(done) < 2:
        raise StrideInputError(f"LDS needs at least 2 retrains; {len(done)} of {len(subsets)} are materialized")
    task = _task(cfg, store)
    qids = task.query_ids["test"]
    losses = frame.pivot(on="query_id", index="subset_id", values="loss").select(qids).to_numpy()
    scores = {"stride": _stride_scores(cfg, store, qids, task.n)}
    model, _tok = load_base_model(store)
    for name in cfg.evaluation.baselines:
        scores[name] = METHODS[name](task, Trained(model), "test").scores
    rows = []
    for name, s in scores.items():
        result = lds(s, subsets[done], losses)
        rows.append({"method": name, **result.as_dict()})
        log(f"LDS {name}: {result.mean:.3f} ± {result.std:.3f} ({result.n_nan} NaN) over {len(done)} retrains")
    table = pl.DataFrame(rows)
    path = write_parquet(table, store.path("lds_report", "lds.parquet"))
    store.write_args("lds_report", {**cfg.evaluation.model_dump(), "retrains_used": len(done)})
    stride = table.filter(pl.col("method") == "stride").row(0, named=True)
    best_baseline = table.filter(pl.col("method") != "stride")["lds_mean"].max() if len(rows) > 1 else float("nan")
    return StageResult(
        "lds_report", path.parent,
        metadata={"retrains_used": len(done), "retrains_planned": len(subsets), "stride_lds": stride["lds_mean"],
                  "best_baseline_lds": float(best_baseline) if best_baseline is not None else float("nan"),
                  **{f"lds_{r['method']}": r["lds_mean"] for r in rows}},
        markdown={"lds": markdown_table(table)},
        metrics={f"lds_{r['method']}": r["lds_mean"] for r in rows},
        fingerprint=file_digest(path),
    )
