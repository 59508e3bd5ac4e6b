"""One asset per engine stage, generated from ``pipeline.STAGES`` and ``pipeline.UPSTREAM``.

Each stage reads its upstream artifacts from the store itself, so the assets carry lineage
through ``deps`` only (no IO managers) and return a ``MaterializeResult`` whose data version
is the content hash of the stage output.
"""

import base64
import hashlib
from pathlib import Path
from typing import Any

import dagster as dg

from stride_assets.engine import pipeline
from stride_assets.engine.pipeline import DESCRIPTIONS, STAGES, UPSTREAM, StageResult, run_stage
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
}

# Inline plots above this size are linked by path instead of embedded in the event log.
MAX_INLINE_PLOT_BYTES = 512 * 1024


def engine_code_version() -> str:
    """Content hash of the engine's source: changing the engine marks every stage's code as changed."""
    engine_dir = Path(pipeline.__file__).parent
    h = hashlib.sha256()
    for source in sorted(engine_dir.glob("*.py")):
        h.update(source.name.encode())
        h.update(source.read_bytes())
    return h.hexdigest()[:12]


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
    @dg.asset(
        name=stage,
        deps=list(UPSTREAM[stage]),
        group_name=GROUPS[stage],
        kinds=KINDS[stage] | {"mlflow"},
        description=DESCRIPTIONS[stage],
        code_version=code_version,
    )
    def _stage(context: dg.AssetExecutionContext, stride: StrideResource, mlflow: MlflowTracking) -> dg.MaterializeResult:
        result = run_stage(stage, stride.config(), stride.store(), log=context.log.info)
        return materialize_result(context, result, stride, mlflow)

    return _stage


_CODE_VERSION = engine_code_version()
stage_assets: list[dg.AssetsDefinition] = [stage_asset(stage, _CODE_VERSION) for stage in STAGES]
