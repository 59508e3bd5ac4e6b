"""The ``evaluation`` group: ground truth by retraining the base-model recipe on random subsets
(one Dagster partition per retrain, so an interrupted ground truth resumes and can fan out over
workers), and the LDS of the pipeline's attributions, with checks that fail in the UI when
STRIDE's LDS is below the configured floor or below a baseline.

Not part of ``stride run``: after a run, materialize the group from the UI (the retrains run as a
backfill over the partitions) or with ``dagster asset materialize``.
"""

import os

import dagster as dg
import polars as pl

from stride_assets.defs.assets import _CODE_VERSION, materialize_result
from stride_assets.engine.config import load_config
from stride_assets.engine.evaluation import pipeline_eval
from stride_assets.resources import MlflowTracking, StrideResource

GROUP = "evaluation"
# The partition keys come from the profile the code location is loaded with (STRIDE_PROFILE).
retrain_partitions = dg.StaticPartitionsDefinition(
    pipeline_eval.retrain_keys(load_config(os.environ.get("STRIDE_PROFILE") or "default"))
)


@dg.asset(group_name=GROUP, deps=["training_corpus"], kinds={"numpy", "parquet"}, code_version=_CODE_VERSION,
          description=(pipeline_eval.eval_subsets.__doc__ or "").strip())
def eval_subsets(context: dg.AssetExecutionContext, stride: StrideResource, mlflow: MlflowTracking) -> dg.MaterializeResult:
    result = pipeline_eval.eval_subsets(stride.config(), stride.store(), context.log.info)
    return materialize_result(context, result, stride, mlflow)


@dg.asset(group_name=GROUP, partitions_def=retrain_partitions,
          deps=["eval_subsets", "base_model", dg.AssetDep("query_set", partition_mapping=dg.AllPartitionMapping())],
          kinds={"pytorch", "parquet"}, code_version=_CODE_VERSION,
          description=(pipeline_eval.retrained_losses.__doc__ or "").strip())
def retrained_losses(context: dg.AssetExecutionContext, stride: StrideResource, mlflow: MlflowTracking) -> dg.MaterializeResult:
    result = pipeline_eval.retrained_losses(stride.config(), stride.store(), context.partition_key, context.log.info)
    return materialize_result(context, result, stride, mlflow)


@dg.asset(group_name=GROUP, deps=["retrained_losses", "influence_scores"], kinds={"scipy", "parquet"},
          code_version=_CODE_VERSION, description=(pipeline_eval.lds_report.__doc__ or "").strip())
def lds_report(context: dg.AssetExecutionContext, stride: StrideResource, mlflow: MlflowTracking) -> dg.MaterializeResult:
    result = pipeline_eval.lds_report(stride.config(), stride.store(), context.log.info)
    return materialize_result(context, result, stride, mlflow)


def _lds_table(stride: StrideResource) -> pl.DataFrame:
    return pl.read_parquet(stride.store().require("lds_report", "lds.parquet"))


@dg.asset_check(asset=lds_report, description="STRIDE's LDS is at least evaluation.lds_floor.")
def stride_lds_above_floor(stride: StrideResource) -> dg.AssetCheckResult:
    table, floor = _lds_table(stride), stride.config().evaluation.lds_floor
    value = float(table.filter(pl.col("method") == "stride")["lds_mean"][0])
    return dg.AssetCheckResult(passed=value >= floor, metadata={"stride_lds": value, "floor": floor})


@dg.asset_check(asset=lds_report, description="STRIDE's LDS is not below any baseline's on the same retrains.")
def stride_not_below_baselines(stride: StrideResource) -> dg.AssetCheckResult:
    table = _lds_table(stride)
    value = float(table.filter(pl.col("method") == "stride")["lds_mean"][0])
    others = table.filter(pl.col("method") != "stride")
    better = others.filter(pl.col("lds_mean") > value)["method"].to_list()
    return dg.AssetCheckResult(
        passed=not better,
        description=f"baselines above STRIDE: {', '.join(better)}" if better else "STRIDE is at or above every baseline",
        metadata={"stride_lds": value, **{f"lds_{m}": float(v) for m, v in others.select("method", "lds_mean").iter_rows()}},
    )
