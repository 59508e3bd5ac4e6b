"""One asset per stage spec (the pipeline's ``engine.stages.STAGES`` and the harness's
``EVALUATION_STAGES``), each a few lines that run the engine.

Each stage reads its upstream artifacts from the store itself, so the assets carry lineage
through ``deps`` only (no IO managers) and return a ``MaterializeResult`` whose data version is
the content hash of the stage output, with the stage's checks evaluated on that same result.
Partitions: dynamic ``shards`` (corpus blocks) and ``query_batches``, a perturbation block is a
(batch, shard) pair, and the evaluation retrains are static partitions. Code versions are per
stage (its code + its settings), so changing the model or a setting marks only what depends on it
stale.
"""


import base64
import time
import warnings
from pathlib import Path
from typing import Any

import dagster as dg

from stride_assets.defs.automation import refresh_condition
from stride_assets.defs.checks import check_results, check_specs
from stride_assets.engine import registry
from stride_assets.engine.config import Profile
from stride_assets.engine.registry import StageSpec
from stride_assets.engine.result import StageResult, rounded
from stride_assets.engine.store import Store
from stride_assets.resources import MlflowTracking, StrideResource

# Inline plots above this size are linked by path instead of embedded in the event log.
MAX_INLINE_PLOT_BYTES = 512 * 1024

shard_partitions = dg.DynamicPartitionsDefinition(name="shards")
batch_partitions = dg.DynamicPartitionsDefinition(name="query_batches")
block_partitions = dg.MultiPartitionsDefinition({"batch": batch_partitions, "shard": shard_partitions})
PARTITIONS: dict[tuple[str, ...], dg.PartitionsDefinition | None] = {
    (): None, ("shard",): shard_partitions, ("batch",): batch_partitions, ("shard", "batch"): block_partitions}


def partitions_for(keys: tuple[str, ...], retrains: list[str]) -> dg.PartitionsDefinition | None:
    """The Dagster partitions of a stage partitioned by ``keys`` (the retrains: static, from the profile)."""
    return dg.StaticPartitionsDefinition(retrains) if keys == ("retrain",) else PARTITIONS[keys]


def partition_mapping(down: tuple[str, ...], up: tuple[str, ...]) -> dg.PartitionMapping | None:
    """How a block of a stage depends on the blocks of an upstream stage."""
    if down == up or not up or not down:
        return None  # identity, or the whole of an unpartitioned / into an unpartitioned stage
    if len(down) == 2 or len(up) == 2:
        with warnings.catch_warnings():  # beta in Dagster 1.13, and the one mapping that says this
            warnings.simplefilter("ignore", dg.BetaWarning)
            return dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=(up if len(down) == 2 else down)[0])
    return dg.AllPartitionMapping()  # e.g. a batch's recovery reads every shard


def stage_keys(spec: StageSpec, context: dg.AssetExecutionContext) -> dict[str, str]:
    """The engine's keyword keys (shard=, batch=, retrain=) of the partition being materialized."""
    if not spec.keys:
        return {}
    key = context.partition_key
    if isinstance(key, dg.MultiPartitionKey):
        return dict(key.keys_by_dimension)
    return {spec.keys[0]: key}


def _plot_markdown(path: Path) -> dg.MetadataValue:
    """The PNG embedded in markdown (over 1000 characters: the UI shows it behind "[Show Markdown]")."""
    data = path.read_bytes()
    if len(data) > MAX_INLINE_PLOT_BYTES:
        return dg.MetadataValue.path(str(path))
    return dg.MetadataValue.md(f"![{path.stem}](data:image/png;base64,{base64.b64encode(data).decode()})")


def stage_metadata(result: StageResult, plot_urls: dict[str, str] | None = None) -> dict[str, Any]:
    """Dagster metadata of a stage result: scalars (floats to 4 significant digits), markdown tables,
    plots, the folder. The asset page renders a markdown entry inline only under 1000 characters, so a
    plot with a URL in ``plot_urls`` (served by `stride mlflow-ui`) is an inline image, its embedded
    copy beside it as ``<plot>_png``; without one, the embedded copy is the entry."""
    # a Path value (e.g. a stage's HTML ``report``) is linked as a path
    meta: dict[str, Any] = {k: dg.MetadataValue.path(str(v)) if isinstance(v, Path) else rounded(v)
                            for k, v in result.metadata.items()}
    if isinstance(result.metadata.get("rows"), int):
        meta["dagster/row_count"] = result.metadata["rows"]
    for name, text in result.markdown.items():
        meta[name if name not in meta else f"{name}_table"] = dg.MetadataValue.md(text)
    for name, path in result.plots.items():
        key = name if name not in meta else f"{name}_plot"
        if url := (plot_urls or {}).get(name):
            meta[key] = dg.MetadataValue.md(f"![{name}]({url})")
            meta[f"{key}_png"] = _plot_markdown(Path(path))
        else:
            meta[key] = _plot_markdown(Path(path))
    meta["path"] = dg.MetadataValue.path(str(result.path))
    return meta


# The data a block is computed from, logged as MLflow dataset inputs: (artifact, dataset label) per key.
INPUT_DATA = {"shard": ("train", "corpus"), "batch": ("queries", "queries")}


def stage_inputs(store: Store, keys: dict[str, str]) -> dict[str, Path]:
    """The block's data as named parquet files: its shard's passages, its query batch (those present)."""
    files = {f"{INPUT_DATA[k][1]}[{v}]": store.file(INPUT_DATA[k][0], v) for k, v in keys.items() if k in INPUT_DATA}
    return {name: path for name, path in files.items() if path.is_file()}


def stage_asset(spec: StageSpec, settings: Any, partitions: dg.PartitionsDefinition | None,
                upstream_keys: dict[str, tuple[str, ...]]) -> dg.AssetsDefinition:
    """The asset of one stage; ``settings`` is the stage's config at load time (its code version)."""
    deps = [dg.AssetDep(up, partition_mapping=partition_mapping(spec.keys, upstream_keys[up])) for up in spec.upstream]
    if spec.reads_source and "shard" in spec.keys:
        deps.append(dg.AssetDep("corpus_source"))

    @dg.asset(
        name=spec.name,
        deps=deps,
        partitions_def=partitions,
        group_name=spec.group,
        kinds={*spec.kinds, "mlflow"},
        description=spec.description,
        code_version=registry.code_version(spec, settings),
        automation_condition=refresh_condition(spec) if spec.eager else None,
        check_specs=check_specs(spec),
    )
    def _stage(context: dg.AssetExecutionContext, stride: StrideResource, mlflow: MlflowTracking) -> dg.MaterializeResult:
        started = time.time()  # the MLflow run covers the stage's compute
        cfg = (spec.configure or Profile.pipeline)(stride.load())
        store, keys = stride.store(), stage_keys(spec, context)
        result = registry.execute(spec, cfg, store, context.log.info, **keys)
        tracking = mlflow.log_stage(context, result, extra_tags={"stride_profile": stride.profile},
                                    pending=store.file("untracked_run", f"{context.run.run_id}-{spec.name}"),
                                    started=started, sections=spec.sections, inputs=stage_inputs(store, keys))
        run_id = tracking.get("mlflow_run_id")
        plot_urls = {name: mlflow.artifact_url(run_id.value, f"plots/{Path(path).name}")
                     for name, path in result.plots.items()} if run_id is not None else {}
        partition = context.partition_key if context.has_partition_key else None
        return dg.MaterializeResult(metadata={**stage_metadata(result, plot_urls), **tracking},
                                    data_version=dg.DataVersion(result.fingerprint),
                                    check_results=check_results(spec, result, cfg, partition))

    return _stage


def stage_assets(specs: list[StageSpec], profile: Profile, retrains: list[str]) -> list[dg.AssetsDefinition]:
    """Every stage's asset, code versions from ``profile``."""
    keys = {s.name: s.keys for s in specs}
    return [stage_asset(s, (s.configure or Profile.pipeline)(profile), partitions_for(s.keys, retrains), keys)
            for s in specs]
