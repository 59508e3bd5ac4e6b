"""One asset per engine stage, generated from ``pipeline.STAGES``, ``UPSTREAM`` and ``PARTITIONED_BY``.

Each stage reads its upstream artifacts from the store itself, so the assets carry lineage
through ``deps`` only (no IO managers) and return a ``MaterializeResult`` whose data version
is the content hash of the stage output. Partitions: dynamic ``shards`` (corpus blocks) and
``query_batches``; a perturbation block is a (batch, shard) pair. Code versions are per stage
(its code + its settings), so changing the model or a setting marks only what depends on it stale.
"""

import base64
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import dagster as dg

from stride_assets.engine import pipeline
from stride_assets.engine.config import load_config
from stride_assets.engine.pipeline import DESCRIPTIONS, PARTITIONED_BY, STAGES, UPSTREAM, StageResult, run_stage
from stride_assets.resources import MlflowTracking, StrideResource

GROUPS: dict[str, str] = {
    "training_corpus": "data",
    "query_set": "data",
    "base_model": "model",
    "subset_design": "attribution",
    "steering_operators": "attribution",
    "perturbation_matrix": "attribution",
    "influence_scores": "attribution",
    "curated_dataset": "curation",
    "selected_dataset": "curation",
    "contamination_report": "curation",
}

# Every stage also logs an MLflow run, so each gets the "mlflow" kind too (Dagster allows 3).
KINDS: dict[str, set[str]] = {
    "training_corpus": {"polars", "parquet"},
    "query_set": {"polars", "parquet"},
    "base_model": {"pytorch", "transformers"},
    "subset_design": {"numpy", "scipy"},
    "steering_operators": {"pytorch", "safetensors"},
    "perturbation_matrix": {"pytorch", "parquet"},
    "influence_scores": {"scikitlearn", "parquet"},
    "curated_dataset": {"polars", "parquet"},
    "selected_dataset": {"polars", "parquet"},
    "contamination_report": {"polars", "parquet"},
}

# Inline plots above this size are linked by path instead of embedded in the event log.
MAX_INLINE_PLOT_BYTES = 512 * 1024


shard_partitions = dg.DynamicPartitionsDefinition(name="shards")
batch_partitions = dg.DynamicPartitionsDefinition(name="query_batches")
block_partitions = dg.MultiPartitionsDefinition({"batch": batch_partitions, "shard": shard_partitions})
PARTITIONS: dict[tuple[str, ...], dg.PartitionsDefinition | None] = {
    (): None, ("shard",): shard_partitions, ("batch",): batch_partitions, ("shard", "batch"): block_partitions}

# Freshness: the sensor brings new shards and batches in; these stages follow by themselves.
EAGER = {"perturbation_matrix", "influence_scores", "curated_dataset", "selected_dataset", "contamination_report"}


def engine_code_version() -> str:
    """Content hash of the engine's source (used by the evaluation group, which retrains with it)."""
    engine_dir = Path(pipeline.__file__).parent
    h = hashlib.sha256()
    for source in sorted(engine_dir.glob("*.py")):
        h.update(source.name.encode())
        h.update(source.read_bytes())
    return h.hexdigest()[:12]


def partition_mapping(down: tuple[str, ...], up: tuple[str, ...]) -> dg.PartitionMapping | None:
    """How a block of a stage depends on the blocks of an upstream stage."""
    if down == up or not up or not down:
        return None  # identity, or the whole of an unpartitioned / into an unpartitioned stage
    if len(down) == 2 or len(up) == 2:
        with warnings.catch_warnings():  # beta in Dagster 1.13, and the one mapping that says this
            warnings.simplefilter("ignore", dg.BetaWarning)
            return dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=(up if len(down) == 2 else down)[0])
    return dg.AllPartitionMapping()  # a batch's recovery reads every shard


def stage_keys(stage: str, context: dg.AssetExecutionContext) -> dict[str, str]:
    """The engine's keyword keys (shard=, batch=) of the partition being materialized."""
    by = PARTITIONED_BY[stage]
    if not by:
        return {}
    key = context.partition_key
    if isinstance(key, dg.MultiPartitionKey):
        return dict(key.keys_by_dimension)
    return {by[0]: key}


def _plot_markdown(path: Path) -> dg.MetadataValue:
    data = path.read_bytes()
    if len(data) > MAX_INLINE_PLOT_BYTES:
        return dg.MetadataValue.path(str(path))
    return dg.MetadataValue.md(f"![{path.stem}](data:image/png;base64,{base64.b64encode(data).decode()})")


def stage_metadata(result: StageResult) -> dict[str, Any]:
    """Dagster metadata of a stage result: scalars as-is, markdown tables, inline plots, the folder."""
    meta: dict[str, Any] = dict(result.metadata)
    if isinstance(result.metadata.get("rows"), int):
        meta["dagster/row_count"] = result.metadata["rows"]
    for name, text in result.markdown.items():
        meta[name if name not in meta else f"{name}_table"] = dg.MetadataValue.md(text)
    for name, path in result.plots.items():
        meta[name if name not in meta else f"{name}_plot"] = _plot_markdown(Path(path))
    meta["path"] = dg.MetadataValue.path(str(result.path))
    return meta


def materialize_result(
    context: dg.AssetExecutionContext, result: StageResult, stride: StrideResource, mlflow: MlflowTracking
) -> dg.MaterializeResult:
    """Log a stage result to MLflow and hand its metadata and data version to Dagster."""
    tracking = mlflow.log_stage(context, result, extra_tags={"stride_profile": stride.profile})
    return dg.MaterializeResult(
        metadata={**stage_metadata(result), **tracking},
        data_version=dg.DataVersion(result.fingerprint),
    )


def stage_asset(stage: str, code_version: str) -> dg.AssetsDefinition:
    by = PARTITIONED_BY[stage]
    deps = [dg.AssetDep(up, partition_mapping=partition_mapping(by, PARTITIONED_BY[up])) for up in UPSTREAM[stage]]
    if stage == "training_corpus":
        deps.append(dg.AssetDep("corpus_source"))

    @dg.asset(
        name=stage,
        deps=deps,
        partitions_def=PARTITIONS[by],
        group_name=GROUPS[stage],
        kinds=KINDS[stage] | {"mlflow"},
        description=DESCRIPTIONS[stage],
        code_version=code_version,
        automation_condition=dg.AutomationCondition.eager() if stage in EAGER else None,
    )
    def _stage(context: dg.AssetExecutionContext, stride: StrideResource, mlflow: MlflowTracking) -> dg.MaterializeResult:
        result = run_stage(stage, stride.config(), stride.store(), log=context.log.info, **stage_keys(stage, context))
        return materialize_result(context, result, stride, mlflow)

    return _stage


def location_config():
    """The profile the code location is loaded with (STRIDE_PROFILE): it sets the code versions."""
    return load_config(os.environ.get("STRIDE_PROFILE") or "default")


_CODE_VERSION = engine_code_version()
stage_assets: list[dg.AssetsDefinition] = [
    stage_asset(stage, pipeline.code_version(stage, location_config())) for stage in STAGES]
