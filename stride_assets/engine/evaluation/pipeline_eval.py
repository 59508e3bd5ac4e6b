"""Quality of the pipeline's own attributions: retrain its base-model recipe on random subsets of
its training corpus, record the query losses, and score the configured method's influence (and the
other methods of ``evaluation.baselines``, EK-FAC among them) by LDS; a check fails when another
method measured higher than the configured one. Three stages, so the retrains can be Dagster partitions (resumable, fanned out):

    eval_subsets -> retrained_losses[retrain_000 .. retrain_{m-1}] -> lds_report

The stages are registered in ``EVALUATION_STAGES`` (the same ``StageSpec`` as the pipeline's), so
the Dagster layer builds their assets, partitions and checks as it does for every stage.

Retraining needs the recipe, so it applies when the pipeline trained its base model itself
(``model.path`` unset); for a user's model it fails early with a clear message.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import polars as pl
import scipy.sparse as sp

from stride_assets.engine import shards as shards_mod
from stride_assets.engine.artifacts import file_digest, write_parquet
from stride_assets.engine.checks import Check, Outcome
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.evaluation.config import EvaluationRun
from stride_assets.engine.evaluation.lds import lds
from stride_assets.engine.evaluation.lm_task import LMTask
from stride_assets.engine.evaluation.methods import score_method
from stride_assets.engine.evaluation.task import Trained, draw_subsets
from stride_assets.engine.registry import StageSpec
from stride_assets.engine.result import StageResult, markdown_table
from stride_assets.engine.store import Store

Log = Callable[[str], None]


def retrain_keys(run: EvaluationRun) -> list[str]:
    return [f"retrain_{j:03d}" for j in range(run.evaluation.m)]


def _task(cfg: StrideConfig, store: Store) -> LMTask:
    """The pipeline's corpus, queries and base-model recipe as a harness task (test split = queries)."""
    if cfg.model.path is not None:
        raise StrideInputError(
            "retraining ground truth needs the base-model recipe: it applies to the model trained here "
            f"(model.path unset), not to {cfg.model.path!r}; use `stride bench` with a fine-tuning task instead"
        )
    train = store.read_train(shards_mod.shard_names(cfg.corpus))
    queries = store.read_queries(shards_mod.batch_names(cfg))
    texts, ids = queries["text"].to_list(), queries["query_id"].to_list()
    starts = {split: frame["completion_start"].to_list() for split, frame in (("train", train), ("test", queries))
              if "completion_start" in frame.columns}  # instruction and chat rows: the completion is scored
    if "test" in starts:
        starts["val"] = starts["test"][:1]
    return LMTask(train["text"].to_list(), {"val": texts[:1], "test": texts}, cfg.model.tiny,
                  max_length=cfg.model.max_length, name="pipeline", example_ids=train["example_id"].to_list(),
                  query_ids={"val": ids[:1], "test": ids}, completion_starts=starts)


def eval_subsets(run: EvaluationRun, store: Store, log: Log) -> StageResult:
    """m random subsets of the training corpus (own seed, independent of the subset design)."""
    ec = run.evaluation
    n = store.read_train(shards_mod.shard_names(run.pipeline.corpus)).height
    subsets = draw_subsets(n, ec.m, ec.fraction, ec.seed)
    rows, cols = np.nonzero(subsets)
    path = write_parquet(pl.DataFrame({"subset_id": rows.astype(np.int32), "example_index": cols.astype(np.int32)}),
                         store.file("eval_subsets"))
    store.write_args("eval_subsets", {**ec.model_dump(), "n": n})
    log(f"evaluation: {ec.m} subsets of {ec.fraction:.0%} of n={n}")
    return StageResult("eval_subsets", path.parent, metadata={"m": ec.m, "n": n, "fraction": ec.fraction},
                       params={f"evaluation.{k}": v for k, v in ec.model_dump().items()}, fingerprint=file_digest(path))


def retrained_losses(run: EvaluationRun, store: Store, log: Log, retrain: str) -> StageResult:
    """One retrain: the base-model recipe on evaluation subset ``retrain``; every query's loss."""
    cfg = run.pipeline
    j = retrain_keys(run).index(retrain)
    task = _task(cfg, store)
    trained = task.train(np.flatnonzero(store.read_eval_subsets()[j]), seed=cfg.model.tiny.seed)
    losses = task.query_losses(trained.model, "test")
    path = write_parquet(pl.DataFrame({"subset_id": [j] * len(losses), "query_id": task.query_ids["test"],
                                       "loss": losses}), store.file("retrained_losses", retrain))
    log(f"{retrain}: mean query loss {losses.mean():.4f} after {trained.info['seconds']:.1f}s")
    return StageResult("retrained_losses", path.parent,
                       metadata={"subset": j, "mean_loss": float(losses.mean()), "seconds": trained.info["seconds"]},
                       metrics={"mean_query_loss": float(losses.mean())}, fingerprint=file_digest(path))


def _stored_scores(cfg: StrideConfig, store: Store, query_ids: list[str], n: int) -> np.ndarray:
    """The pipeline's influence_scores of every batch as a dense (queries x examples) matrix."""
    scores = store.read_scores(shards_mod.batch_names(cfg))
    row = {q: i for i, q in enumerate(query_ids)}
    M = sp.csr_matrix((scores["score"].to_numpy(), ([row[q] for q in scores["query_id"]],
                                                    scores["example_index"].to_numpy())), shape=(len(query_ids), n))
    return M.toarray()


# the harness's name of each pipeline method, when it is measured beside another (``evaluation.baselines``)
HARNESS_NAME = {"stride": "stride", "ekfac": "kronfluence_ekfac"}


def _others(run: EvaluationRun) -> list[str]:
    configured = HARNESS_NAME.get(run.pipeline.attribution.method)
    return [name for name in run.evaluation.baselines if name != configured]


def _settings(name: str, cfg: StrideConfig) -> dict:
    """What a method measured beside the configured one takes from the pipeline's config."""
    if name == "stride":
        return {"config": cfg}
    if name.startswith("kronfluence_"):
        return {"include_head": cfg.attribution.include_head}
    return {}


def lds_report(run: EvaluationRun, store: Store, log: Log) -> StageResult:
    """LDS of the pipeline's stored influence scores (its attribution.method) and of every method in
    evaluation.baselines, on the same retrains."""
    cfg = run.pipeline
    method = cfg.attribution.method
    subsets = store.read_eval_subsets()
    frame = store.read_retrained_losses()
    done = frame["subset_id"].unique().sort().to_numpy()
    if len(done) < 2:
        raise StrideInputError(f"LDS needs at least 2 retrains; {len(done)} of {len(subsets)} are materialized")
    task = _task(cfg, store)
    qids = task.query_ids["test"]
    losses = frame.pivot(on="query_id", index="subset_id", values="loss").select(qids).to_numpy()
    scores = {method: _stored_scores(cfg, store, qids, task.n)}
    model, _tok = store.load_base_model()
    for name in _others(run):
        scores[name] = score_method(name, task, Trained(model), "test", **_settings(name, cfg)).scores
    rows = []
    for name, s in scores.items():
        result = lds(s, subsets[done], losses)
        rows.append({"method": name, **result.as_dict()})
        log(f"LDS {name}: {result.mean:.3f} ± {result.std:.3f} ({result.n_nan} NaN) over {len(done)} retrains")
    table = pl.DataFrame(rows)
    path = write_parquet(table, store.file("lds"))
    store.write_args("lds_report", {**run.evaluation.model_dump(), "method": method, "retrains_used": len(done)})
    others = table.filter(pl.col("method") != method)["lds_mean"]
    best_other = others.max() if len(rows) > 1 else None
    return StageResult(
        "lds_report", path.parent,
        metadata={"method": method, "retrains_used": len(done), "retrains_planned": len(subsets),
                  "configured_lds": rows[0]["lds_mean"],
                  "best_other_lds": float(best_other) if best_other is not None else float("nan"),
                  **{f"lds_{r['method']}": r["lds_mean"] for r in rows}},
        markdown={"lds": markdown_table(table)},
        metrics={f"lds_{r['method']}": r["lds_mean"] for r in rows},
        fingerprint=file_digest(path),
    )


def _lds_of(result: StageResult) -> dict[str, float]:
    return {k[len("lds_"):]: float(v) for k, v in result.metadata.items() if k.startswith("lds_")}


def _above_floor(result: StageResult, run: EvaluationRun) -> Outcome:
    method = result.metadata["method"]
    value, floor = _lds_of(result)[method], run.evaluation.lds_floor
    return Outcome(value >= floor, {"method": method, "lds": value, "floor": floor})


def _configured_is_best(result: StageResult, _run: EvaluationRun) -> Outcome:
    values = _lds_of(result)
    method = result.metadata["method"]
    value = values.pop(method)
    better = [m for m, v in values.items() if v > value]
    return Outcome(not better, {"method": method, "lds": value, **{f"lds_{m}": v for m, v in values.items()}},
                   f"measured above the configured {method}: {', '.join(better)} (consider attribution.method)"
                   if better else f"the configured {method} is at or above every method measured")


EVALUATION_STAGES: tuple[StageSpec, ...] = (
    StageSpec("eval_subsets", eval_subsets, upstream=("training_corpus",), sections=("evaluation",),
              modules=("evaluation.task", "evaluation.pipeline_eval"), group="evaluation", kinds=("numpy", "parquet"),
              configure=EvaluationRun.from_profile),
    StageSpec("retrained_losses", retrained_losses, upstream=("eval_subsets", "base_model", "query_set"),
              keys=("retrain",), sections=("pipeline.model", "pipeline.corpus"),
              modules=("evaluation.lm_task", "evaluation.task", "lm", "losses", "backbone", "formats"),
              group="evaluation", kinds=("pytorch", "parquet"), configure=EvaluationRun.from_profile),
    StageSpec("lds_report", lds_report, upstream=("retrained_losses", "influence_scores"),
              sections=("evaluation", "pipeline.attribution"),
              modules=("evaluation.lds", "evaluation.methods", "evaluation.methods.base", "evaluation.methods.gradients",
                       "evaluation.methods.similarity", "evaluation.methods.kronfluence_methods", "ekfac",
                       "evaluation.lm_task"),
              group="evaluation", kinds=("scipy", "parquet"), configure=EvaluationRun.from_profile,
              checks=(Check("lds_above_floor", "The configured method's LDS is at least evaluation.lds_floor.",
                            _above_floor),
                      Check("configured_method_is_best", "The configured attribution.method has the highest LDS "
                            "of every method measured on the same retrains (evaluation.baselines).",
                            _configured_is_best))),
)
